import io
import json
import re
import sys
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from mmllm.cli import main
from mmllm.train.shards import write_shards
from mmllm.train.synth import CHART_KINDS, PROMPT_TEMPLATES, QUESTION_TYPES, TASK_LEVELS, synthesize

COMBOS = [(task, level) for task in ("ocr", "chart") for level in TASK_LEVELS[task]]
SIZE = {("ocr", "easy"): (128, 32), ("ocr", "medium"): (128, 32), ("ocr", "dense"): (96, 64),
        ("chart", "easy"): (128, 64), ("chart", "medium"): (128, 64)}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[tuple[str, str], tuple[Path, dict]]:
    """One 15-sample set per (task, level): 15 holds every hard (question type, chart kind) pair once."""
    root = tmp_path_factory.mktemp("synth")
    return {(t, l): (root / f"{t}-{l}", synthesize(t, root / f"{t}-{l}", 15, seed=3, level=l)) for t, l in COMBOS}


@pytest.mark.parametrize("task,level", COMBOS)
def test_same_seed_same_bytes_other_seed_differs(task, level, datasets, tmp_path):
    out, _ = datasets[task, level]
    again = synthesize(task, tmp_path / "again", 15, seed=3, level=level)
    assert tree(out) == tree(tmp_path / "again")
    assert again["n"] == 15 and again["out"] == str(tmp_path / "again")

    synthesize(task, tmp_path / "other", 15, seed=4, level=level)
    other = tree(tmp_path / "other")
    assert other["train.jsonl"] != tree(out)["train.jsonl"]
    assert sum(other[f] != b for f, b in tree(out).items() if f.startswith("images/")) >= 10


@pytest.mark.parametrize("task,level", COMBOS)
def test_smaller_n_is_a_prefix(task, level, datasets, tmp_path):
    out, _ = datasets[task, level]
    synthesize(task, tmp_path, 6, seed=3, level=level)
    small, full = tree(tmp_path), tree(out)
    assert sorted(f for f in small if f.startswith("images/")) == [f"images/{task}-{i:06d}.png" for i in range(6)]
    assert all(full[f] == b for f, b in small.items() if f.startswith("images/"))
    for name in ("train.jsonl", "items.jsonl"):
        assert full[name].splitlines()[:6] == small[name].splitlines()


@pytest.mark.parametrize("task,level", COMBOS)
def test_records_and_images_are_valid(task, level, datasets):
    out, _ = datasets[task, level]
    train, items = read_jsonl(out / "train.jsonl"), read_jsonl(out / "items.jsonl")
    assert [r["id"] for r in train] == [r["id"] for r in items] == [f"{task}-{i:06d}" for i in range(15)]
    for rec, item in zip(train, items):
        assert rec["image"] == item["image"] == f"images/{item['id']}.png"
        human, gpt = rec["conversations"]
        assert (human["from"], gpt["from"]) == ("human", "gpt")
        prompt = PROMPT_TEMPLATES[task].format(question=item["question"])
        assert human["value"] == "<image>\n" + prompt and "<image>" not in item["question"]
        assert item["answers"] == [gpt["value"]] and gpt["value"].strip()
        with Image.open(out / item["image"]) as img:
            assert img.mode == "RGB"
            if (task, level) in SIZE:
                assert img.size == SIZE[task, level]
            elif task == "ocr":
                assert 32 <= img.height <= 64


def test_ocr_text_matches_level(datasets):
    easy = read_jsonl(datasets["ocr", "easy"][0] / "items.jsonl")
    assert all(re.fullmatch(r"[a-z0-9]{4,8}", it["answers"][0]) for it in easy)
    assert {it["meta"]["font"] for it in easy} == {"DejaVuSansMono"}
    assert all(it["question"] == "What text is in the image?" for it in easy)
    hard = read_jsonl(datasets["ocr", "hard"][0] / "items.jsonl")
    assert all(re.fullmatch(r"[A-Za-z0-9]+( [A-Za-z0-9]+){0,2}", it["answers"][0]) for it in hard)
    assert all(len(it["answers"][0]) <= 20 for it in hard)
    assert len({it["meta"]["font"] for it in hard}) > 3
    medium = read_jsonl(datasets["ocr", "medium"][0] / "items.jsonl")
    assert all(re.fullmatch(r"[a-z0-9]{4,8}", it["answers"][0]) for it in medium)
    assert {it["meta"]["font"] for it in medium} > {"DejaVuSansMono"}
    assert all(it["meta"]["font"].startswith("DejaVuSansMono") for it in medium)
    dense = read_jsonl(datasets["ocr", "dense"][0] / "items.jsonl")
    assert all(re.fullmatch(r"[a-z0-9]{6} [a-z0-9]{6}", it["answers"][0]) for it in dense)


@pytest.mark.parametrize("level", TASK_LEVELS["chart"])
def test_chart_answers_match_drawn_values(level, datasets):
    out, summary = datasets["chart", level]
    items = read_jsonl(out / "items.jsonl")
    for it in items:
        by_label = dict(zip(it["meta"]["labels"], it["meta"]["values"]))
        assert len(set(by_label.values())) == len(by_label)  # distinct: no ties for largest/smallest
        names = re.findall(r"(?:of|between|and) (\w+)", it["question"])
        expected = {
            "count": lambda: str(len(by_label)),
            "largest": lambda: max(by_label, key=by_label.get),
            "smallest": lambda: min(by_label, key=by_label.get),
            "value": lambda: str(by_label[names[0]]),
            "difference": lambda: str(abs(by_label[names[0]] - by_label[names[1]])),
        }[it["type"]]()
        assert it["answers"] == [expected], it
        assert it["chart"] in CHART_KINDS[level]
    # Question types and chart kinds are spread evenly, and the summary counts them.
    types, kinds = Counter(it["type"] for it in items), Counter(it["chart"] for it in items)
    assert set(types) == set(QUESTION_TYPES[level]) and max(types.values()) - min(types.values()) <= 1
    assert set(kinds) == set(CHART_KINDS[level]) and max(kinds.values()) - min(kinds.values()) <= 1
    assert summary["counts"] == {"type": dict(sorted(types.items())), "chart": dict(sorted(kinds.items()))}
    if level == "hard":
        assert len({(it["type"], it["chart"]) for it in items}) == 15


@pytest.mark.parametrize("kwargs,valid", [
    (dict(task="tts"), "ocr, chart, asr"),
    (dict(level="tiny"), "ocr level 'tiny'; valid levels: easy, medium, hard, dense"),
    (dict(task="asr", level="dense"), "easy, hard"),
    (dict(n=0), "at least 1"),
])
def test_invalid_arguments(kwargs, valid, tmp_path):
    args = dict(task="ocr", out=tmp_path, n=2, level="easy") | kwargs
    with pytest.raises(ValueError, match=valid):
        synthesize(**args)


def test_synthesize_once_reuses_only_the_same_dataset(tmp_path, monkeypatch):
    """A finished folder is reused; other arguments, an older generator or an interrupted run rewrite it."""
    from mmllm.train import synth

    out = tmp_path / "d"
    assert synth.synthesize_once("ocr", out, 4, seed=1) is True
    first = tree(out)
    assert json.loads(first[synth.STAMP])["seed"] == 1
    assert synth.synthesize_once("ocr", out, 4, seed=1) is False and tree(out) == first
    assert synth.synthesize_once("ocr", out, 4, seed=2) is True and tree(out)["train.jsonl"] != first["train.jsonl"]

    stamp = synth._stamp
    monkeypatch.setattr(synth, "_stamp", lambda *a: {**stamp(*a), "generator": "edited"})
    assert synth.synthesize_once("ocr", out, 4, seed=2) is True  # same arguments, another generator
    monkeypatch.undo()

    assert synth.synthesize_once("ocr", out, 4, seed=1) is True and tree(out) == first
    (out / synth.STAMP).unlink()  # as an interrupted run leaves the folder
    assert synth.synthesize_once("ocr", out, 4, seed=1) is True and tree(out) == first


def test_synth_refuses_a_folder_that_is_not_empty(tmp_path, capsys):
    synthesize("ocr", tmp_path, 4)
    before = tree(tmp_path)
    assert main(["data", "synth", "--task", "ocr", "--n", "2", "--out", str(tmp_path)]) == 1
    assert capsys.readouterr().err == (f"mmllm: error: FileExistsError: {tmp_path} is not empty (4 entries); "
                                       "pass --overwrite to replace the synthetic set it holds\n")
    assert tree(tmp_path) == before


def test_synth_overwrite_leaves_only_the_new_set_and_no_stale_sample(tmp_path):
    synthesize("asr", tmp_path / "a", 3)
    synthesize("ocr", tmp_path / "x", 40)
    (tmp_path / "x" / ".train.jsonl.abc123.tmp").write_text("cut short")  # a killed write's leftover
    assert main(["data", "synth", "--task", "ocr", "--n", "5", "--out", str(tmp_path / "x"), "--overwrite"]) == 0
    assert sorted(tree(tmp_path / "x")) == sorted(
        ["train.jsonl", "items.jsonl", "synth.json", *(f"images/ocr-{i:06d}.png" for i in range(5))])
    assert main(["data", "synth", "--task", "ocr", "--n", "2", "--out", str(tmp_path / "a"), "--overwrite"]) == 0
    assert not (tmp_path / "a" / "audio").exists() and len(read_jsonl(tmp_path / "a" / "train.jsonl")) == 2


def test_synth_overwrite_refuses_a_folder_holding_other_files(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["data", "synth", "--task", "ocr", "--n", "2", "--out", str(tmp_path), "--overwrite"]) == 1
    assert capsys.readouterr().err == (f"mmllm: error: FileExistsError: {tmp_path} holds files that `data synth` "
                                       "does not write (notes.txt); --overwrite replaces a synthetic set only\n")
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_synth_and_shard_draw_a_progress_bar_on_a_terminal_and_nothing_in_a_log(tmp_path, monkeypatch, as_terminal):
    terminal = as_terminal(monkeypatch)
    synthesize("ocr", tmp_path / "d", 3)
    write_shards(tmp_path / "d" / "train.jsonl", tmp_path / "shards")
    drawn = terminal.getvalue()
    assert "synth ocr: " in drawn and "/3 [" in drawn and "shard train.jsonl: " in drawn and "record" in drawn
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a log file or a pipe
    synthesize("ocr", tmp_path / "e", 3)
    write_shards(tmp_path / "e" / "train.jsonl", tmp_path / "shards-e")
    assert sys.stderr.getvalue() == ""
