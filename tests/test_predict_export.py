"""Interop as users expect it: `mmllm predict` leaves one prediction per item and names every item it
skipped; `mmllm export` turns a checkpoint into a folder `MMLLM.from_pretrained` loads, with the same logits."""
import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch.plugins.precision import HalfPrecision

from mmllm.cli import export, main
from mmllm.model import MMLLM
from mmllm.train.data import MMDataModule
from mmllm.train.items import ItemsDataset, PromptCollator
from mmllm.train.load import load_model
from mmllm.train.synth import synthesize

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, mmllm, tiny_yaml) -> tuple[Path, Path]:
    """A scratch folder with 16 synthetic OCR items in d/ and the checkpoint of a 3-step fit on them."""
    root = tmp_path_factory.mktemp("fitted")
    mmllm("data", "synth", "--task", "ocr", "--n", "16", "--out", "d", cwd=root)
    mmllm("fit", "--config", tiny_yaml, "--data.train", "d/train.jsonl", "--data.batch_size", "4",
          "--trainer.max_steps", "3", "--trainer.default_root_dir", "fit", cwd=root)
    return root, root / "fit" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"


def items_with_bad_ones(root: Path) -> tuple[str, list[str], list[str]]:
    """d/items.jsonl with an item whose image is missing after the 5th item and a line that is no JSON at
    the end: the file (relative to root), the good ids in input order, and the skip reasons expected."""
    lines = (root / "d" / "items.jsonl").read_text().splitlines()
    missing = json.dumps({"id": "gone", "image": "images/none.png", "question": "What text is in the image?",
                          "answers": ["x"]})
    (root / "d" / "with_bad.jsonl").write_text("\n".join([*lines[:5], missing, *lines[5:], "not json"]) + "\n")
    ids = [json.loads(line)["id"] for line in lines]
    skipped = ["d/with_bad.jsonl:18: invalid JSON (Expecting value at column 1)",
               "d/with_bad.jsonl:6 (id gone): image not found: d/images/none.png"]
    return "d/with_bad.jsonl", ids, skipped


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def first_batch(model: MMLLM, root: Path, n: int = 4):
    """The first `n` items of d/items.jsonl, encoded by the model's own processor."""
    items = ItemsDataset(root / "d" / "items.jsonl", model.processor)
    return PromptCollator(model.processor)([items[i] for i in range(n)])


def test_predict_writes_every_item_once_beside_the_run_config_and_reports_the_skipped(fitted, mmllm, tiny_yaml):
    root, ckpt = fitted
    data, ids, skipped = items_with_bad_ones(root)
    proc = mmllm("predict", "--config", tiny_yaml, "--data.predict", data, "--data.batch_size", "4",
                 "--ckpt_path", str(ckpt), "--trainer.default_root_dir", "pred", cwd=root)
    run = root / "pred" / "lightning_logs" / "version_0"
    rows = read_rows(run / "predictions.jsonl")
    assert [r["id"] for r in rows] == ids
    assert all(isinstance(r["prediction"], str) for r in rows)
    assert rows[0]["answers"] == json.loads((root / "d" / "items.jsonl").read_text().splitlines()[0])["answers"]
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["n"], summary["skipped"], summary["skipped_items"]) == (16, 2, skipped)
    assert (summary["data"], summary["ckpt_path"]) == (data, str(ckpt))
    assert (run / "config.yaml").is_file()
    assert [f"[mmllm] skipped {s}" for s in skipped] == [l for l in proc.stdout.splitlines() if "skipped d/" in l]


def test_two_ddp_processes_write_one_file_in_input_order_and_count_each_skip_once(fitted, mmllm, tiny_yaml):
    root, ckpt = fitted
    data, ids, skipped = items_with_bad_ones(root)
    mmllm("predict", "--config", tiny_yaml, "--data.predict", data, "--data.batch_size", "3", "--ckpt_path", str(ckpt),
          "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.default_root_dir", "ddp",
          "--predictions.dirpath", "preds", cwd=root)
    assert sorted(p.name for p in (root / "preds").iterdir()) == ["predictions.jsonl", "summary.json"]
    assert [r["id"] for r in read_rows(root / "preds" / "predictions.jsonl")] == ids
    summary = json.loads((root / "preds" / "summary.json").read_text())
    assert (summary["n"], summary["skipped"], summary["skipped_items"]) == (16, 2, skipped)


def test_predict_generates_the_max_new_tokens_given_not_the_checkpoints_and_the_summary_says_so(
        fitted, mmllm, tiny_yaml):
    root, ckpt = fitted
    mmllm("predict", "--config", tiny_yaml, "--data.predict", "d/items.jsonl", "--data.batch_size", "4",
          "--ckpt_path", str(ckpt), "--model.max_new_tokens", "3", "--predictions.dirpath", "short", cwd=root)
    model = load_model(ckpt)
    with torch.no_grad():
        generated = model.generate(first_batch(model, root).inputs, max_new_tokens=3)
    rows = read_rows(root / "short" / "predictions.jsonl")
    assert [r["prediction"] for r in rows[:4]] == [model.processor.decode(ids) for ids in generated.tolist()]
    assert json.loads((root / "short" / "summary.json").read_text())["max_new_tokens"] == 3


def test_a_batch_of_items_survives_the_input_casts_of_half_precision_and_of_fsdp(fitted):
    """Lightning's precision plugins and FSDP's root rebuild the dataclasses they are handed before any hook;
    the frozen records once crashed both ("A frozen dataclass was passed to apply_to_collection"; "field
    records is declared with init=False"). A batch passes through unchanged and the model casts its media."""
    from torch.distributed.utils import _apply_to_tensors

    root, ckpt = fitted
    model = load_model(ckpt)
    batch = first_batch(model, root, n=2)
    records = list(batch.records)
    converted = HalfPrecision("bf16-true").convert_input(batch)
    converted = _apply_to_tensors(lambda t: t.to(torch.bfloat16) if t.is_floating_point() else t, converted)
    assert converted.ids == [r.id for r in converted.records] == ["ocr-000000", "ocr-000001"]
    assert converted.records == records
    moved = MMDataModule().transfer_batch_to_device(converted, torch.device("cpu"), 0)
    assert moved.records == records
    with torch.no_grad():
        assert model.to(torch.bfloat16)(moved.inputs).logits.dtype == torch.bfloat16


def test_export_writes_a_folder_whose_model_gives_the_checkpoints_logits_exactly(fitted, mmllm):
    root, ckpt = fitted
    proc = mmllm("export", str(ckpt), "model", cwd=root)
    files = sorted(p.relative_to(root) for p in (root / "model").rglob("*") if p.is_file())
    assert proc.stdout.splitlines()[0] == f"exported {ckpt} to model:"
    assert [line.split()[0] for line in proc.stdout.splitlines()[1:]] == [str(f) for f in files]
    original, exported = load_model(ckpt), MMLLM.from_pretrained(root / "model")
    batch = first_batch(original, root)
    assert torch.equal(first_batch(exported, root).inputs.input_ids, batch.inputs.input_ids)  # same tokenizer
    with torch.no_grad():
        assert torch.equal(original(batch.inputs).logits, exported(batch.inputs).logits)


def test_export_refuses_a_non_empty_folder_unless_told_to_overwrite(fitted, tmp_path, mmllm):
    root, ckpt = fitted
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "notes.txt").write_text("mine")
    proc = mmllm("export", str(ckpt), "model", cwd=tmp_path, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "mmllm: error: FileExistsError: model is not empty; pass --overwrite to write over it"
    assert [p.name for p in (tmp_path / "model").iterdir()] == ["notes.txt"]
    written = export(ckpt, tmp_path / "model", overwrite=True)
    assert written == sorted(p for p in (tmp_path / "model").rglob("*") if p.is_file() and p.name != "notes.txt")
    assert (tmp_path / "model" / "notes.txt").read_text() == "mine"


def test_predict_takes_an_exported_folder_and_synthesises_no_training_set(
        tmp_path, monkeypatch, tiny_yaml, tiny_config):
    """In-process: the config names a 2000-sample synthetic training set that predict never reads."""
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(1)  # not the run's seed: predictions equal the folder's only if its weights are loaded
    exported = MMLLM(tiny_config()).eval()
    exported.save_pretrained("export")  # what `mmllm export` writes
    synthesize("ocr", "d", 4)
    assert main(["predict", "--config", tiny_yaml, "--ckpt_path", "export", "--data.predict", "d/items.jsonl",
                 "--trainer.default_root_dir", "pred", "--predictions.dirpath", "preds",
                 "--model.max_new_tokens", "4"]) == 0
    rows = read_rows(tmp_path / "preds" / "predictions.jsonl")
    with torch.no_grad():
        expected = exported.generate(first_batch(exported, tmp_path).inputs, max_new_tokens=4)
    assert [r["prediction"] for r in rows] == [exported.processor.decode(row) for row in expected.tolist()]
    assert not (tmp_path / "runs").exists()  # the config's synth_dir


def test_fit_refuses_to_resume_an_exported_folder_and_names_init_from(
        tmp_path, monkeypatch, capsys, tiny_yaml, tiny_config):
    monkeypatch.chdir(tmp_path)
    MMLLM(tiny_config()).save_pretrained("export")
    assert main(["fit", "--config", tiny_yaml, "--ckpt_path", "export", "--trainer.default_root_dir", "fit"]) == 1
    assert capsys.readouterr().err == ("mmllm: error: ValueError: export is an exported model, not a run to resume: "
                                       "start from its weights with --model.init_from\n")
    assert not (tmp_path / "runs").exists()
