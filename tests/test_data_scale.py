"""Data at scale: records indexed instead of held, self-contained parquet shards, length-grouped batches that
see every sample once and resume exactly, a sample's loss untouched by the padding around it, and the
padding fraction of an epoch logged."""
import json
import pickle
import signal
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from torchdata.stateful_dataloader import StatefulDataLoader

from mmllm.cli import main
from mmllm.jsonl import BOM, read_records
from mmllm.model import MMLLM
from mmllm.processor import IGNORE_INDEX
from mmllm.train.data import ConversationDataset, Loaded, MMDataModule
from mmllm.train.health import BadSampleMonitor
from mmllm.train.index import FileIndex
from mmllm.train.sampling import LengthGroupedSampler, grouped_order
from mmllm.train.shards import SHARD_INDEX, ShardReader, write_shards

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from data_scale import synth_mix  # noqa: E402 (the script is no package)


@pytest.fixture(scope="module")
def processor(tiny_module):
    return tiny_module().processor


@pytest.fixture(scope="module")
def mix(tmp_path_factory):
    """OCR lines and charts, easy and hard (images of 1 to 7 tiles), 8 of each, merged: what
    scripts/data_scale.py measures padding on."""
    return synth_mix(tmp_path_factory.mktemp("mix"), 8)


# Index ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["jsonl", "json"])
def test_the_index_gives_the_records_and_bad_lines_the_in_ram_reader_gives_keeping_only_arrays(tmp_path, layout, chat):
    rows = [chat(i, answer="é😀" * (i % 5)) for i in range(1000)]
    rows[10], rows[20] = {"id": "nofield"}, 7
    if layout == "jsonl":
        path = tmp_path / "train.jsonl"
        path.write_bytes(BOM + b"\n".join(json.dumps(r, ensure_ascii=False).encode() for r in rows) + b"\n{broken\n")
    else:
        path = tmp_path / "train.json"
        path.write_bytes(BOM + json.dumps(rows, ensure_ascii=False, indent=1).encode())
    expected, bad = read_records(path, ("conversations",))
    index = FileIndex(path)
    assert [index[i] for i in range(len(index))] == expected  # file, line (or item), data: all equal
    assert [str(b) for b in index.bad_lines] == [str(b) for b in bad]
    assert len(bad) == (3 if layout == "jsonl" else 2)
    assert len(pickle.dumps(index)) < 48 * len(index)  # arrays: line, start, end and length features a record


def test_a_file_rewritten_after_it_was_indexed_gives_bad_samples_not_a_crash(tmp_path, processor, chat, write_jsonl):
    path = write_jsonl(tmp_path / "train.jsonl", [chat(0), chat(1)])
    ds = ConversationDataset(path, processor, substitute=False)
    write_jsonl(tmp_path / "train.jsonl", [chat(0, answer="a much longer answer now"), chat(1)])
    reason = "changed since it was indexed (invalid JSON (Expecting value at column 1))"
    assert ds[1] == Loaded(None, bad=[f"{path}:2: {reason}"])


def test_a_folder_without_a_shard_index_is_one_clear_error(tmp_path, processor):
    with pytest.raises(FileNotFoundError, match=f"is a folder without a shard index \\({SHARD_INDEX}\\)"):
        ConversationDataset(str(tmp_path), processor)


# Shards -----------------------------------------------------------------------------------------------
def test_shards_give_the_same_samples_as_the_jsonl_they_were_written_from(mix, tmp_path, processor):
    summary = write_shards(mix, tmp_path / "shards", rows=10, group_rows=4)
    assert (summary.n, summary.shards, summary.bad) == (32, [f"shard-0000{k}.parquet" for k in range(4)], [])
    assert [pq.ParquetFile(tmp_path / "shards" / s).metadata.num_row_groups for s in summary.shards] == [3, 3, 3, 1]
    jsonl = ConversationDataset(str(mix), processor, measure_images=True)
    shards = ConversationDataset(str(tmp_path / "shards"), processor)
    assert len(shards) == len(jsonl) == 32
    for i in range(32):
        a, b = jsonl[i], shards[i]
        assert a.id == b.id and a.bad == b.bad == []
        assert a.sample.input_ids == b.sample.input_ids and a.sample.labels == b.sample.labels
        assert torch.equal(a.sample.pixel_values, b.sample.pixel_values)
    assert np.array_equal(jsonl.lengths, shards.lengths)  # the shard index holds the image sizes


def test_shards_are_read_one_row_group_at_a_time_from_memory_mapped_files(mix, tmp_path, monkeypatch):
    write_shards(mix, tmp_path / "shards", rows=16, group_rows=4)
    reader, opened, groups = ShardReader(tmp_path / "shards"), [], []
    real_open, real_group = pq.ParquetFile.__init__, pq.ParquetFile.read_row_group
    monkeypatch.setattr(pq.ParquetFile, "__init__",
                        lambda self, source, **kw: opened.append((source, kw)) or real_open(self, source, **kw))
    monkeypatch.setattr(pq.ParquetFile, "read_row_group", lambda self, i, *a, **kw: groups.append(i) or
                        real_group(self, i, *a, **kw))
    monkeypatch.setattr(pq.ParquetFile, "read", lambda *a, **kw: pytest.fail("a whole shard was read"))
    assert [reader[i].id for i in range(32)] == [r.id for r in read_records(mix, ("conversations",))[0]]
    assert [kw for _, kw in opened] == [{"memory_map": True}] * 2
    assert groups == [0, 1, 2, 3] * 2  # in order, each group decoded once
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._files == {} and clone[17].id == reader[17].id


def test_sharding_reports_bad_records_with_file_and_line_and_training_counts_them(
        tmp_path, processor, capsys, text_image, chat, write_jsonl):
    text_image("w").save(tmp_path / "0.png")
    (tmp_path / "notes.png").write_text("not an image")
    rows = [chat(0, image="0.png"), chat(1, image="missing.png"), chat(2, image="notes.png"),
            chat(3, audio="a.wav"), chat(4, image=5), chat(5)]
    src = write_jsonl(tmp_path / "train.jsonl", rows)
    with open(src, "a") as fh:
        fh.write("{broken\n")
    assert main(["data", "shard", "--src", src, "--out", str(tmp_path / "shards"), "--rows", "1"]) == 0
    reasons = [f"{src}:2 (id t1): image not found: {tmp_path / 'missing.png'}",
               f"{src}:3 (id t2): cannot decode image {tmp_path / 'notes.png'}: not an image Pillow can identify",
               f"{src}:4 (id t3): audio is not embedded in shards (images only); keep audio sets as JSONL",
               f"{src}:5 (id t4): field 'image' must be a path or a list of paths, got int",
               f"{src}:7: invalid JSON (Expecting property name enclosed in double quotes at column 2)"]
    assert capsys.readouterr().out == (f"wrote 2 records in 2 shard(s) to {tmp_path / 'shards'}; 5 bad record(s) "
                                       "left out\n" + "".join(f"  skipped {r}\n" for r in reasons))
    data = MMDataModule(train=str(tmp_path / "shards"), processor=processor)
    ds = data.dataset("train")
    assert [ds[i].id for i in range(2)] == ["t0", "t5"] and [str(b) for b in ds.bad_lines] == reasons
    assert capsys.readouterr().out == "".join(f"[mmllm] skipped malformed line {r}\n" for r in reasons)


def test_the_shard_command_fails_when_nothing_could_be_written_and_refuses_a_used_folder(
        tmp_path, capsys, chat, write_jsonl):
    src = write_jsonl(tmp_path / "train.jsonl", [chat(0, image="missing.png")])
    assert main(["data", "shard", "--src", src, "--out", str(tmp_path / "shards")]) == 1
    assert capsys.readouterr().err == (f"mmllm: error: ValueError: no record of {src} could be sharded: 1 bad; "
                                       f"first: {src}:1 (id t0): image not found: {tmp_path / 'missing.png'}\n")
    assert not (tmp_path / "shards" / SHARD_INDEX).exists()
    assert main(["data", "shard", "--src", src, "--out", str(tmp_path)]) == 1
    assert "is not empty; shard into a new folder" in capsys.readouterr().err


def test_a_corrupt_embedded_image_is_a_bad_sample_naming_shard_row_and_id(
        tmp_path, processor, text_image, chat, write_jsonl):
    for i in range(3):
        text_image(f"w{i}").save(tmp_path / f"{i}.png")
    (tmp_path / "1.png").write_bytes((tmp_path / "1.png").read_bytes()[:80])  # header intact, pixels cut off
    src = write_jsonl(tmp_path / "train.jsonl", [chat(i, image=f"{i}.png") for i in range(3)])
    write_shards(src, tmp_path / "shards")
    ds = ConversationDataset(str(tmp_path / "shards"), processor)
    sample = ds[1]
    assert sample.id == "t2" and len(sample.bad) == 1  # replaced by the next good record
    assert sample.bad[0].startswith(f"{tmp_path / 'shards' / 'shard-00000.parquet'} row 1 (id t1) from {src}:2: "
                                       "cannot decode embedded image 1.png: ")


# Length-grouped batches ------------------------------------------------------------------------------
@pytest.mark.parametrize("n,world", [(1000, 1), (1000, 2), (998, 2)])
def test_grouped_batches_hold_every_sample_exactly_once_per_epoch_on_every_rank_count(n, world):
    lengths = np.random.default_rng(0).integers(20, 2000, n)
    for epoch in (0, 1):
        ranks = [grouped_order(lengths, 8, world, rank, seed=epoch) for rank in range(world)]
        assert len({len(r) for r in ranks}) == 1  # the same number of steps on every rank
        assert sorted(np.concatenate(ranks).tolist()) == list(range(n))
        batches = [r[k:k + 8] for r in ranks for k in range(0, len(r), 8)]
        spread = np.mean([np.ptp(lengths[b]) for b in batches])
        assert spread < 0.1 * np.ptp(lengths)  # similar lengths share a batch (random batches: ~0.8)
    assert not np.array_equal(grouped_order(lengths, 8, world, 0, 0), grouped_order(lengths, 8, world, 0, 1))


def test_an_uneven_epoch_is_padded_with_repeats_as_the_distributed_sampler_pads():
    ranks = [grouped_order(np.arange(101), 8, 2, rank, seed=0) for rank in range(2)]
    seen = np.bincount(np.concatenate(ranks), minlength=101)
    assert [len(r) for r in ranks] == [51, 51] and sorted(seen.tolist()) == [1] * 100 + [2]


def test_the_grouped_sampler_resumes_mid_epoch_with_the_rest_of_its_batches():
    lengths = np.random.default_rng(1).integers(1, 500, 200)

    def loader() -> StatefulDataLoader:
        data = list(range(200))
        sampler = LengthGroupedSampler(data, lengths, 4, num_replicas=2, rank=1, seed=3)
        sampler.set_epoch(2)
        return StatefulDataLoader(data, batch_size=4, sampler=sampler)

    whole = [b.tolist() for b in loader()]
    first = loader()
    it = iter(first)
    head = [next(it).tolist() for _ in range(7)]
    state = first.state_dict()
    resumed = loader()
    resumed.sampler.set_epoch(0)  # a resumed loader gets its epoch back from the checkpoint
    resumed.load_state_dict(state)
    assert head + [b.tolist() for b in resumed] == whole
    assert max(np.ptp(lengths[b]) for b in whole) < 30  # the whole epoch is one mega-batch here


def test_the_length_estimate_is_the_token_count_up_to_the_prompt_overhead(mix, processor):
    ds = ConversationDataset(str(mix), processor, measure_images=True)
    real = np.array([len(ds[i].sample.input_ids) for i in range(len(ds))])
    assert len(set(real.tolist())) > 10 and set((real - ds.lengths).tolist()) == {13}  # BOS, prefixes, EOS
    blind = ConversationDataset(str(mix), processor)  # sizes unknown: every image at its most tiles
    assert (blind.lengths >= ds.lengths).all() and (blind.lengths - ds.lengths).max() > 0


def per_sample_loss(model: MMLLM, inputs) -> torch.Tensor:
    labels = inputs.labels.masked_fill(inputs.input_ids == model.image_token_id, IGNORE_INDEX)
    logits = model(inputs).logits.float()
    ce = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=IGNORE_INDEX, reduction="none")
    return ce.sum(1) / (labels[:, 1:] != IGNORE_INDEX).sum(1)


@pytest.mark.parametrize("arch,extra", [("nvlm_d", {}), ("nvlm_d", {"input_positions": 512}), ("nvlm_x", {}),
                                        ("nvlm_x", {"cross_attention_positions": "rope"}), ("nvlm_h", {}),
                                        ("nvlm_h", {"cross_attention_positions": "rope"})])
def test_a_sample_loss_is_the_same_alone_and_left_padded_in_a_batch(arch, extra, tiny_config, text_image):
    torch.manual_seed(0)
    model = MMLLM(tiny_config(arch=arch, **extra)).eval()
    with torch.no_grad():
        for block in model.cross_blocks().values():  # open gates, so the images reach the loss
            block.attn_gate.fill_(0.7)
            block.ffn_gate.fill_(0.7)
    turns = [("<image>\nWhat?", "abc", [text_image("abc")]),
             ("<image>\nWhat text is in this tall image?", "a longer answer", [text_image("x", size=(200, 190))]),
             ("no image here", "ok", [])]
    samples = [model.processor.encode([{"from": "human", "value": q}, {"from": "gpt", "value": a}], ims)
               for q, a, ims in turns]
    assert len({len(s.input_ids) for s in samples}) == 3
    with torch.no_grad():
        together = per_sample_loss(model, model.processor.collate(samples))
        alone = torch.cat([per_sample_loss(model, model.processor.collate([s])) for s in samples])
    torch.testing.assert_close(together, alone, rtol=1e-6, atol=1e-6)


# Padding fraction -------------------------------------------------------------------------------------
class Masks(L.Callback):
    def __init__(self) -> None:
        self.masks = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.masks.append(batch.inputs.attention_mask.clone())


def fit_padding(module, train: str, group: bool) -> tuple[L.Trainer, list[torch.Tensor]]:
    masks = Masks()
    trainer = L.Trainer(max_epochs=1, callbacks=[BadSampleMonitor(), masks], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(module, MMDataModule(train=train, batch_size=2, group_by_length=group, processor=module.processor))
    return trainer, masks.masks


def test_the_padding_fraction_is_logged_per_epoch_and_printed_for_the_run_and_grouping_brings_it_to_the_least(
        tmp_path, capsys, chat, write_jsonl, tiny_module):
    answers = [1, 40, 3, 25, 7, 31, 12, 2]  # 23 + len tokens each
    path = write_jsonl(tmp_path / "train.jsonl", [chat(i, "x" * n) for i, n in enumerate(answers)])
    for group in (False, True):
        trainer, masks = fit_padding(tiny_module(), path, group)
        pad, total = sum(int((m == 0).sum()) for m in masks), sum(m.numel() for m in masks)
        assert trainer.callback_metrics["padding_fraction"].item() == pytest.approx(pad / total, rel=1e-6)
        assert (f"[mmllm] padding_fraction {pad / total:.4f} over the run ({pad:,} pad of "
                f"{total:,} batch tokens)" in capsys.readouterr().out)
        least = sum(b - a for a, b in zip(sorted(answers)[::2], sorted(answers)[1::2]))
        assert pad == least if group else pad > least  # grouped: the epoch is one mega-batch, sorted and paired


@pytest.mark.slow
def test_a_killed_grouped_run_on_shards_resumes_with_identical_per_step_losses(mix, tmp_path, drive, fit_plan):
    write_shards(mix, tmp_path / "shards", rows=10, group_rows=4)
    data = tmp_path / "shards"
    args = [*fit_plan.args(data, "out", 2, 2), "--data.group_by_length", "true"]
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    whole.mkdir(), broken.mkdir()
    assert drive(whole, args).returncode == 0
    assert drive(broken, args, kill_at=fit_plan.kill).returncode == -signal.SIGKILL
    assert drive(broken, [*args, "--ckpt_path", "last"]).returncode == 0
    for rank in range(2):
        assert fit_plan.losses(broken / f"loss-rank{rank}.tsv") == fit_plan.losses(whole / f"loss-rank{rank}.tsv")
    assert len(fit_plan.losses(whole / "loss-rank0.tsv")) == fit_plan.steps
