"""No single training line kills a run and nothing bad goes uncounted: every fault in the data ends as one
clear error or as a counted skip that names file:line (or file item n) and the sample id."""
import json
import os
from collections import Counter

from pathlib import Path

import lightning as L
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch
from PIL import Image

from mmllm.jsonl import BOM, read_records
from mmllm.processor import IGNORE_INDEX
from mmllm.train.data import Collator, ConversationDataset, Loaded, MMDataModule
from mmllm.train.health import BadSampleMonitor, TrainingAborted
from mmllm.train.shards import write_shards
from mmllm.train.synth import synthesize


@pytest.fixture(scope="module")
def processor(tiny_module):
    return tiny_module().processor


def trainer(**kw) -> L.Trainer:
    return L.Trainer(callbacks=[BadSampleMonitor(show=100)], logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", **kw)


# 1 ---------------------------------------------------------------------------------------------------
def test_bad_utf8_deep_nesting_and_a_huge_integer_are_named_bad_lines_and_a_bom_keeps_the_first_line(
        tmp_path, processor, capsys, chat, tiny_module):
    path = tmp_path / "train.jsonl"
    good = [json.dumps(chat(i)).encode() + b"\n" for i in range(4)]
    path.write_bytes(BOM + good[0] + b'{"id": "u", "conversations": "\xff"}\n'
                     + b"[" * 100_000 + b"]" * 100_000 + b"\n" + b'{"n": ' + b"9" * 5000 + b"}\n"
                     + b"".join(good[1:]))
    ds = ConversationDataset(str(path), processor)
    assert [r.where() for r in ds.records] == [f"{path}:{n} (id t{i})" for i, n in ((0, 1), (1, 5), (2, 6), (3, 7))]
    bad = [str(b) for b in ds.bad_lines]
    assert bad[:2] == [f"{path}:2: invalid UTF-8 (byte 0xff at column 31)",
                       f"{path}:3: invalid JSON (nested too deeply)"]
    assert bad[2].startswith(f"{path}:4: invalid JSON (Exceeds the limit (4300 digits) for integer string conversion")
    assert len(bad) == 3

    module = tiny_module()
    run = trainer(max_epochs=1)
    run.fit(module, MMDataModule(train=str(path), batch_size=4, max_bad_fraction=0.5, processor=module.processor))
    assert run.global_step == 1  # the four good lines, one batch
    out = capsys.readouterr().out
    assert "[mmllm] epoch 0: 0 sample(s) replaced, 3 malformed line(s) skipped at load, 0 truncated and kept" in out
    for reason in bad:
        assert f"[mmllm] skipped malformed line {reason}\n" in out and f"  - {reason}\n" in out


# 2 ---------------------------------------------------------------------------------------------------
def test_an_image_given_as_training_data_is_one_clear_error_with_the_first_reason(tmp_path, processor, text_image):
    png = tmp_path / "some.png"
    text_image("x").save(png)
    n_bad = len(read_records(png, ("conversations",))[1])
    with pytest.raises(ValueError) as err:
        MMDataModule(train=str(png), processor=processor).dataset("train")
    assert str(err.value) == (f"no usable samples in {png}: {n_bad} malformed line(s); "
                              f"first: {png}:1: invalid UTF-8 (byte 0x89 at column 1)")


@pytest.mark.parametrize("kw,message", [
    ({"max_bad_fraction": -1}, r"max_bad_fraction must be a fraction in \[0, 1\], got -1"),
    ({"max_bad_fraction": 1.5}, r"max_bad_fraction must be a fraction in \[0, 1\], got 1.5"),
    ({"max_bad_fraction": float("nan")}, r"max_bad_fraction must be a fraction in \[0, 1\], got nan"),
    ({"max_length": 0}, r"max_length must be at least 1 token \(or None: no limit\), got 0"),
    ({"length_policy": "cut"}, r"length_policy must be one of \('skip', 'truncate'\), got 'cut'"),
])
def test_an_impossible_limit_is_refused_when_the_datamodule_is_built(kw, message):
    with pytest.raises(ValueError, match=message):
        MMDataModule(**kw)


# 3 ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("media,reason", [
    ({"image": 5}, "field 'image' must be a path or a list of paths, got int"),
    ({"image": {"path": "0.png"}}, "field 'image' must be a path or a list of paths, got dict"),
    ({"audio": ["a.wav", 3, None]}, "field 'audio' must be a path or a list of paths, got a list holding NoneType, int"),
])
def test_a_media_field_that_is_not_a_path_is_a_bad_sample_naming_the_field_and_its_type(
        tmp_path, processor, media, reason, chat, write_jsonl):
    path = write_jsonl(tmp_path / "train.jsonl", [chat(0), chat(1, **media)])
    sample = ConversationDataset(path, processor)[1]
    assert sample.id == "t0" and sample.bad == [f"{path}:2 (id t1): {reason}"]


# 4 ---------------------------------------------------------------------------------------------------
def test_the_default_is_at_most_4096_tokens_a_sample_and_longer_ones_are_skipped():
    data = MMDataModule()
    assert (data.max_length, data.length_policy) == (4096, "skip")


def test_under_skip_a_sample_one_token_over_max_length_is_a_bad_sample_with_its_token_count(
        tmp_path, processor, chat, write_jsonl):
    path = write_jsonl(tmp_path / "train.jsonl", [chat(0, "x" * 8), chat(1, "x" * 9)])
    ds = ConversationDataset(path, processor, max_length=30)
    assert len(ds[0].sample.input_ids) == 30 and ds[0].bad == []
    assert ds[1].id == "t0" and ds[1].bad == [f"{path}:2 (id t1): 31 tokens > max_length 30"]


def test_a_100000_character_answer_is_skipped_before_it_is_tokenised(
        tmp_path, processor, monkeypatch, chat, write_jsonl):
    path = write_jsonl(tmp_path / "train.jsonl", [chat(0), chat(1, "x" * 100_000)])
    ds = ConversationDataset(path, processor)
    encode, answers = processor.encode, []
    monkeypatch.setattr(processor, "encode",
                        lambda turns, *a, **k: answers.append(turns[-1]["value"]) or encode(turns, *a, **k))
    sample = ds[1]
    assert sample.id == "t0" and answers == ["a0"]  # the long answer never reached the tokenizer
    assert sample.bad == [f"{path}:2 (id t1): 100002 characters of text > max_length 4096 tokens "
                             "of at most 23 characters each"]


def test_truncate_cuts_the_end_of_a_long_sample_to_max_length_and_notes_it(tmp_path, processor, chat, write_jsonl):
    path = write_jsonl(tmp_path / "train.jsonl", [chat(0, "x" * 8), chat(1, "x" * 9)])
    ds = ConversationDataset(path, processor, max_length=30, length_policy="truncate")
    full = processor.encode(chat(1, "x" * 9)["conversations"], [])
    sample = ds[1]
    assert len(full.input_ids) == 31 and sample.id == "t1" and sample.bad == []
    assert sample.sample.input_ids == full.input_ids[:30] and sample.sample.labels == full.labels[:30]
    assert sum(label != IGNORE_INDEX for label in sample.sample.labels) == 9  # the answer; its end-of-sequence is cut
    assert sample.sample.truncated == [f"{path}:2 (id t1): 31 tokens > max_length 30: truncated to 30 tokens"]
    assert ds[0].sample.truncated == [] and tuple(Collator(processor)([ds[0], sample]).inputs.input_ids.shape) == (2, 30)


def test_truncate_never_cuts_an_image_nor_every_answer_token_and_skips_instead(
        tmp_path, processor, chat, write_jsonl, text_image):
    text_image("w").save(tmp_path / "0.png")
    path = write_jsonl(tmp_path / "train.jsonl", [chat(0, "abc", image="0.png")])
    full = processor.encode(chat(0, "abc", image="0.png")["conversations"], [text_image("w")])
    # 34 tokens up to the image's end, then "\nhi" + assistant prefix (15) and "abc" + EOS (4).
    assert (len(full.input_ids), full.media_end) == (53, 34)

    def load(max_length: int):
        ds = ConversationDataset(path, processor, substitute=False, max_length=max_length, length_policy="truncate")
        return ds[0]

    assert load(33).bad == [
        f"{path}:1 (id t0): 53 tokens > max_length 33; truncating would cut an image or audio clip"]
    assert load(49).bad == [f"{path}:1 (id t0): 53 tokens > max_length 49; truncating would leave no answer token"]
    kept = load(50)
    assert kept.bad == [] and len(kept.sample.input_ids) == 50 and len(kept.sample.pixel_values) == 5
    assert [label for label in kept.sample.labels if label != IGNORE_INDEX] == full.labels[49:50]  # "a"


# 5 ---------------------------------------------------------------------------------------------------
def test_twenty_bad_samples_in_a_row_under_max_bad_fraction_are_replaced_each_decoded_once(
        tmp_path, processor, monkeypatch, capsys, chat, write_jsonl, tiny_module):
    rows = [chat(i, image="missing.png") if 100 <= i < 120 else chat(i) for i in range(320)]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    ds = ConversationDataset(path, processor)
    load_image, loads = processor.load_image, Counter()
    monkeypatch.setattr(processor, "load_image", lambda p: loads.update([p]) or load_image(p))
    samples = [ds[i] for i in range(320)]
    assert [s.id for s in samples[98:122]] == ["t98", "t99", *["t120"] * 20, "t120", "t121"]
    missing = tmp_path / "missing.png"
    assert [b for s in samples for b in s.bad] == [
        f"{path}:{i + 1} (id t{i}): image not found: {missing}" for i in range(100, 120)]
    assert loads == Counter({str(missing): 20})  # a stand-in search skips records already found bad

    module = tiny_module()
    run = trainer(max_epochs=1)
    run.fit(module, MMDataModule(train=path, batch_size=32, max_bad_fraction=0.1, processor=module.processor))
    assert run.global_step == 10
    assert "[mmllm] epoch 0: 20 sample(s) replaced, 0 malformed line(s) skipped at load" in capsys.readouterr().out


def test_a_training_set_with_no_good_record_is_one_clear_error(tmp_path, processor, chat, write_jsonl):
    path = write_jsonl(tmp_path / "train.jsonl", [chat(i, image="missing.png") for i in range(3)])
    with pytest.raises(ValueError) as err:
        ConversationDataset(path, processor)[1]
    assert str(err.value) == (f"no usable sample in {path}: all 3 record(s) failed to load; "
                              f"first: {path}:1 (id t0): image not found: {tmp_path / 'missing.png'}")


# 6 ---------------------------------------------------------------------------------------------------
def test_bad_val_and_test_samples_are_dropped_counted_and_reported_never_replaced(
        tmp_path, capsys, chat, write_jsonl, tiny_module):
    rows = [chat(0, image="missing.png"), chat(1, image="missing.png"), chat(2), chat(3, image="missing.png")]
    path = write_jsonl(tmp_path / "val.jsonl", rows)
    reasons = [f"{path}:{i + 1} (id t{i}): image not found: {tmp_path / 'missing.png'}" for i in (0, 1, 3)]
    module = tiny_module()
    data = MMDataModule(val=path, test=path, batch_size=2, processor=module.processor)
    ds, collate = data.dataset("val"), Collator(module.processor)
    assert ds[0] == Loaded(None, bad=reasons[:1])
    first, second = collate([ds[0], ds[1]]), collate([ds[2], ds[3]])
    assert first.inputs is None and first.ids == [] and first.bad == reasons[:2]
    assert second.ids == ["t2"] and second.inputs.input_ids.shape[0] == 1 and second.bad == reasons[2:]
    expected = module.model(second.inputs).loss.item()

    run = trainer()
    val = run.validate(module, data)[0]
    assert val["val_bad_samples"] == 3.0 and val["val_loss"] == pytest.approx(expected, rel=1e-5)
    test = run.test(module, data)[0]
    assert test["test_bad_samples"] == 3.0 and test["test_loss"] == pytest.approx(expected, rel=1e-5)
    out = capsys.readouterr().out
    for split in ("val", "test"):
        assert (f"[mmllm] epoch 0 {split}: 3 sample(s) dropped, 0 malformed line(s) skipped at load, "
                "0 truncated and kept") in out
    assert all(out.count(f"  - {reason}\n") == 2 for reason in reasons)


# 7 ---------------------------------------------------------------------------------------------------
def test_a_conversation_without_an_assistant_answer_is_a_bad_sample_not_a_silent_zero_loss(
        tmp_path, processor, chat, write_jsonl):
    rows = [chat(0), {"id": "q", "conversations": [{"from": "human", "value": "hi"}]},
            {"id": "e", "conversations": []}, chat(3, answer="")]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    ds = ConversationDataset(path, processor)
    assert [ds[i].bad for i in (1, 2, 3)] == [
        [f"{path}:{n} (id {sid}): no assistant turn to train on"] for n, sid in ((2, "q"), (3, "e"), (4, "t3"))]
    assert [ds[i].id for i in (1, 2, 3)] == ["t0"] * 3


# 8 ---------------------------------------------------------------------------------------------------
def test_a_llava_json_array_with_images_in_their_own_folder_is_read_item_by_item(tmp_path, processor, chat, text_image):
    (tmp_path / "images").mkdir()
    text_image("w").save(tmp_path / "images" / "0.png")
    (tmp_path / "llava").mkdir()
    path = tmp_path / "llava" / "mix.json"
    path.write_bytes(BOM + json.dumps([chat(0, image="0.png"), {"id": "nofield"}, 7, chat(3)], indent=1).encode())
    data = MMDataModule(train=str(path), image_folder=str(tmp_path / "images"), processor=processor)
    ds = data.dataset("train")
    assert [r.where() for r in ds.records] == [f"{path} item 1 (id t0)", f"{path} item 4 (id t3)"]
    assert [str(b) for b in ds.bad_lines] == [f"{path} item 2: missing field(s) ['conversations']",
                                              f"{path} item 3: expected a JSON object, got int"]
    assert ds[0].bad == [] and len(ds[0].sample.pixel_values) == 5
    assert ConversationDataset(str(path), processor)[0].bad == [
        f"{path} item 1 (id t0): image not found: {tmp_path / 'llava' / '0.png'}"]  # no folder: the JSON's own


def test_a_json_array_that_is_not_json_as_a_whole_is_one_error_naming_the_file(tmp_path, processor):
    path = tmp_path / "mix.json"
    path.write_text('\n[\n  {"id": 1},\n')
    with pytest.raises(ValueError) as err:
        ConversationDataset(str(path), processor)
    assert str(err.value) == (f"{path} starts with '[' but is not a valid JSON array: "
                              "invalid JSON (Expecting value at line 3 column 13)")


# 9 ---------------------------------------------------------------------------------------------------
def test_synth_writes_through_the_atomic_writer_so_a_failed_write_keeps_the_old_files(tmp_path, monkeypatch):
    synthesize("ocr", tmp_path, 2, seed=0)
    before = {name: (tmp_path / name).read_bytes() for name in ("train.jsonl", "items.jsonl")}

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left on device"):
        synthesize("ocr", tmp_path, 3, seed=0, overwrite=True)
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []


# 10 --------------------------------------------------------------------------------------------------
def test_a_png_whose_decoder_refuses_it_is_a_counted_bad_sample_also_in_a_worker(
        tmp_path, processor, chat, write_jsonl, text_image, text_bomb_png):
    text_image("w").save(tmp_path / "0.png")
    text_bomb_png(tmp_path / "1.png")
    path = write_jsonl(tmp_path / "train.jsonl", [chat(0, image="0.png"), chat(1, image="1.png")])
    reason = (f"{path}:2 (id t1): cannot decode image {tmp_path / '1.png'}: "
              "ValueError: Decompressed data too large for PngImagePlugin.MAX_TEXT_CHUNK")
    assert ConversationDataset(path, processor)[1].bad == [reason]
    data = MMDataModule(train=path, batch_size=2, num_workers=1, max_bad_fraction=0.5, processor=processor)
    assert next(iter(data.train_dataloader())).bad == [reason]


def test_a_large_jpeg_is_decoded_scaled_down_to_no_less_than_the_tile_grid_it_needs(tmp_path, processor):
    Image.new("RGB", (4000, 3000), "white").save(tmp_path / "big.jpg")
    image = processor.load_image(tmp_path / "big.jpg")  # 32-px tiles, a 3x2 grid: 96x64 needed
    assert image.size == (500, 375)  # decoded at 1/8 scale, the most the JPEG decoder reduces
    assert len(processor.tiles(image)[0]) == 7


def test_an_image_over_the_decode_cap_that_cannot_decode_scaled_down_is_refused_undecoded(
        tmp_path, processor, monkeypatch, chat, write_jsonl):
    Image.new("RGB", (200, 100), "white").save(tmp_path / "wide.png")
    monkeypatch.setattr("mmllm.processor.MAX_DECODE_PIXELS", 10_000)
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("the image was decoded"))
    path = write_jsonl(tmp_path / "train.jsonl", [chat(0), chat(1, image="wide.png")])
    assert ConversationDataset(path, processor)[1].bad == [
        f"{path}:2 (id t1): image {tmp_path / 'wide.png'} of 200x100 pixels is over the 10,000 pixels decoded "
        "whole (only a JPEG decodes scaled down); downscale it"]


def test_a_long_audio_file_is_read_only_up_to_the_window_and_its_note_gives_its_whole_length(tmp_path):
    from mmllm.audio import AudioFrontEnd, load_audio

    wave = (0.3 * np.sin(np.arange(60 * 44_100) / 10)).astype(np.float32)
    sf.write(tmp_path / "long.wav", wave, 44_100)
    front = AudioFrontEnd(80, 4, lambda frames: frames)
    cut, whole = front.load(tmp_path / "long.wav"), load_audio(tmp_path / "long.wav")
    assert (len(cut), len(whole)) == (65_600, 960_000)  # the 4 s window and 0.1 s more, of 60 s
    assert np.array_equal(cut[:64_000], whole[:64_000])  # the window's samples are those of a whole decode
    assert front.features(cut)[2] == front.features(whole)[2] == "audio clip of 60.0 s truncated to the 4 s window"
    assert torch.equal(front.features(cut)[0], front.features(whole)[0])


# 11 --------------------------------------------------------------------------------------------------
@pytest.fixture
def damaged_shards(tmp_path, text_image, chat, write_jsonl) -> tuple[str, Path]:
    """Six records sharded two a row group into one file (returned with the source)."""
    for i in range(6):
        text_image(f"w{i}").save(tmp_path / f"{i}.png")
    src = write_jsonl(tmp_path / "train.jsonl", [chat(i, image=f"{i}.png") for i in range(6)])
    write_shards(src, tmp_path / "shards", group_rows=2)
    return src, tmp_path / "shards" / "shard-00000.parquet"


def test_a_damaged_row_group_makes_its_rows_bad_samples_naming_file_and_row_group(tmp_path, processor, damaged_shards):
    src, shard = damaged_shards
    column = pq.ParquetFile(shard).metadata.row_group(1).column(2)  # the JSON of rows 2 and 3
    raw = bytearray(shard.read_bytes())
    raw[column.data_page_offset:column.data_page_offset + 16] = b"\xff" * 16
    shard.write_bytes(bytes(raw))
    ds = ConversationDataset(str(tmp_path / "shards"), processor)
    samples = [ds[i] for i in range(6)]
    assert [s.id for s in samples] == ["t0", "t1", "t4", "t4", "t4", "t5"]
    bad = [b for s in samples for b in s.bad]
    assert [b.split(" (", 1)[0] for b in bad] == [f"{shard} row 2", f"{shard} row 3"]
    assert all(b.startswith(f"{shard} row {r} (row group 1): cannot read the shard (") for r, b in zip((2, 3), bad))


def test_a_truncated_shard_makes_its_rows_bad_samples_and_the_run_stops_naming_the_file(
        tmp_path, processor, damaged_shards):
    src, shard = damaged_shards
    shard.write_bytes(shard.read_bytes()[:200])
    data = MMDataModule(train=str(tmp_path / "shards"), batch_size=2, processor=processor)
    with pytest.raises(ValueError) as err:
        data.dataset("train")[0]
    assert str(err.value).startswith(f"no usable sample in {tmp_path / 'shards'}: all 6 record(s) failed to load; "
                                     f"first: {shard} row 0 (row group 0): cannot read the shard (ArrowInvalid: ")


# 12 --------------------------------------------------------------------------------------------------
def test_a_jsonl_whose_first_record_is_a_list_is_read_as_jsonl_not_as_an_array(tmp_path, processor, chat):
    path = tmp_path / "train.jsonl"
    path.write_bytes(b'["not", "a record"]\n' + b"".join(json.dumps(chat(i)).encode() + b"\n" for i in (1, 2)))
    ds = ConversationDataset(str(path), processor)
    assert [r.where() for r in ds.records] == [f"{path}:2 (id t1)", f"{path}:3 (id t2)"]
    assert [str(b) for b in ds.bad_lines] == [f"{path}:1: expected a JSON object, got list"]
    one_line = tmp_path / "one.json"
    one_line.write_bytes(b"[" + json.dumps(chat(0)).encode() + b", " + json.dumps(chat(1)).encode() + b"]\n")
    assert [r.where() for r in ConversationDataset(str(one_line), processor).records] == [
        f"{one_line} item 1 (id t0)", f"{one_line} item 2 (id t1)"]


# 13 --------------------------------------------------------------------------------------------------
def test_the_training_image_folder_is_not_applied_to_val_which_reads_beside_its_own_file(
        tmp_path, chat, write_jsonl, text_image, tiny_module):
    (tmp_path / "images").mkdir()
    (tmp_path / "val" / "images").mkdir(parents=True)
    text_image("a").save(tmp_path / "images" / "a.png")  # LLaVA's layout: train paths name files in images/
    text_image("b").save(tmp_path / "val" / "images" / "b.png")
    train = write_jsonl(tmp_path / "train.jsonl", [chat(0, image="a.png")])
    val = write_jsonl(tmp_path / "val" / "val.jsonl", [chat(1, image="images/b.png"), chat(2, image="images/b.png")])
    module = tiny_module()
    data = MMDataModule(train=train, val=val, image_folder=str(tmp_path / "images"), batch_size=2,
                        processor=module.processor)
    assert data.dataset("train")[0].bad == []
    metrics = trainer().validate(module, data)[0]
    assert metrics["val_bad_samples"] == 0.0 and "val_loss" in metrics


def test_a_val_image_folder_of_its_own_is_where_val_paths_resolve(tmp_path, processor, chat, write_jsonl, text_image):
    text_image("b").save(tmp_path / "b.png")
    (tmp_path / "val").mkdir()
    val = write_jsonl(tmp_path / "val" / "val.jsonl", [chat(1, image="b.png")])
    data = MMDataModule(val=val, test=val, val_image_folder=str(tmp_path), processor=processor)
    assert data.dataset("val")[0].bad == []
    assert data.dataset("test")[0].bad == [f"{val}:1 (id t1): image not found: {tmp_path / 'val' / 'b.png'}"]


@pytest.mark.parametrize("split", ["val", "test"])
def test_a_val_or_test_split_whose_samples_are_all_bad_stops_the_run_naming_split_and_file(
        tmp_path, split, chat, write_jsonl, tiny_module):
    path = write_jsonl(tmp_path / f"{split}.jsonl", [chat(i, image="missing.png") for i in range(3)])
    module = tiny_module()
    data = MMDataModule(**{split: path}, batch_size=2, processor=module.processor)
    with pytest.raises(TrainingAborted) as err:
        (trainer().validate if split == "val" else trainer().test)(module, data)
    assert str(err.value) == (f"all 3 {split} samples are bad, so there is no {split}_loss (--data.{split} {path}); "
                              f"first: {path}:1 (id t0): image not found: {tmp_path / 'missing.png'}")


# 14 --------------------------------------------------------------------------------------------------
def test_one_shard_file_given_as_training_data_is_read_as_that_shard(
        tmp_path, processor, chat, write_jsonl, text_image):
    for i in range(5):
        text_image(f"w{i}").save(tmp_path / f"{i}.png")
    src = write_jsonl(tmp_path / "train.jsonl",
                      [chat(i, image=f"{i}.png") for i in range(5)] + [chat(9, image="gone.png")])
    write_shards(src, tmp_path / "shards", rows=3, group_rows=2)
    ds = ConversationDataset(str(tmp_path / "shards" / "shard-00001.parquet"), processor, measure_images=True)
    assert [ds[i].id for i in range(len(ds))] == ["t3", "t4"] and ds.bad_lines == []
    assert all(ds[i].bad == [] for i in range(2))
    whole = ConversationDataset(str(tmp_path / "shards"), processor)
    assert list(ds.lengths) == list(whole.lengths[3:]) and len(whole.bad_lines) == 1


def test_a_parquet_file_without_a_shard_index_beside_it_is_one_clear_error(tmp_path, processor):
    pq.write_table(pa.table({"json": ["{}"]}), tmp_path / "other.parquet")
    with pytest.raises(FileNotFoundError) as err:
        ConversationDataset(str(tmp_path / "other.parquet"), processor)
    assert str(err.value) == (f"{tmp_path / 'other.parquet'} is a parquet file without the index.npz of "
                              "`mmllm data shard` beside it; shard the training set with `mmllm data shard`")


def test_validate_synthesises_the_val_set_and_not_the_training_set(tmp_path, tiny_module):
    module = tiny_module()
    data = MMDataModule(synth_task="ocr", synth_n=8, synth_dir=str(tmp_path), processor=module.processor)
    trainer().validate(module, data)
    assert sorted(p.name for p in (tmp_path / "ocr-easy-n8").iterdir()) == ["val"]
