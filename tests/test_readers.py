"""Public benchmark layouts -> items.jsonl: exact items, images reachable from OUT, bad records reported."""
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from mmllm.eval.metrics import score
from mmllm.eval.readers import READERS, convert


def image(path: Path, colour: str = "white") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), colour).save(path)  # format from the suffix: .png or .jpg


def garbage(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not an image at all")


def write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data), encoding="utf-8")


def chartqa_src(root: Path) -> Path:
    image(root / "png" / "a.png", "red")
    image(root / "png" / "b.png", "blue")
    garbage(root / "png" / "broken.png")
    write_json(root / "test_human.json", [
        {"imgname": "a.png", "query": "What is the max?", "label": "42"},
        {"imgname": "b.png", "query": "Which year?", "label": "2019"},
        {"imgname": "gone.png", "query": "q", "label": "1"},
        {"imgname": "a.png", "query": "q"},
        {"imgname": "a.png", "query": 7, "label": "1"},
    ])
    write_json(root / "test_augmented.json", [
        {"imgname": "b.png", "query": "Is it rising?", "label": "Yes"},
        {"imgname": "broken.png", "query": "q", "label": "1"},
    ])
    return root


def ocrbench_src(root: Path) -> Path:
    image(root / "OCRBench_Images" / "IIIT5K" / "test" / "1.png")
    image(root / "OCRBench_Images" / "HME100K" / "test_images" / "2.jpg")
    write_json(root / "OCRBench.json", [
        # OCRBench's own ids repeat across source datasets (211 here twice): ours come from positions.
        {"dataset_name": "IIIT5K", "id": 211, "image_path": "IIIT5K/test/1.png",
         "question": "what is written in the image?", "answers": "CENTRE", "type": "Regular Text Recognition"},
        {"dataset_name": "HME100k", "id": 211, "image_path": "HME100K/test_images/2.jpg",
         "question": "Please write out the expression of the formula in the image using LaTeX format.",
         "answers": ["x _ { 1 } = 0\n", "x _ 1 = 0\n"], "type": "Handwritten Mathematical Expression Recognition"},
        {"dataset_name": "IIIT5K", "id": 3, "image_path": "IIIT5K/test/1.png", "question": "q", "answers": "A",
         "type": "Text Recognition"},
        {"dataset_name": "IIIT5K", "id": 4, "image_path": "IIIT5K/test/9.png", "question": "q", "answers": "A",
         "type": "Regular Text Recognition"},
        {"dataset_name": "IIIT5K", "id": 5, "image_path": "IIIT5K/test/1.png", "question": "q", "answers": [],
         "type": "Regular Text Recognition"},
        {"dataset_name": "IIIT5K", "id": 6, "image_path": "IIIT5K/test/1.png", "answers": "A",
         "type": "Regular Text Recognition"},
    ])
    return root


TEXTVQA_ANSWERS = ["nike"] * 7 + ["nike shoes"] * 3


def textvqa_src(root: Path, image_dir: str = "train_images") -> Path:
    image(root / image_dir / "003a8ae2ef43b901.jpg", "green")
    garbage(root / image_dir / "00b2c8a5e4c6f2d1.jpg")
    write_json(root / "TextVQA_0.5.1_val.json", {"dataset_name": "textvqa", "dataset_version": "0.5.1", "data": [
        {"question_id": 34602, "question": "what brand is this?", "image_id": "003a8ae2ef43b901",
         "answers": TEXTVQA_ANSWERS, "set_name": "val"},
        {"question_id": 34603, "question": "what colour is the logo?", "image_id": "003a8ae2ef43b901",
         "answers": ["white"] * 10, "set_name": "val"},
        {"question_id": 34604, "question": "what is written?", "image_id": "00b2c8a5e4c6f2d1",
         "answers": ["a"] * 10},
        {"question": "no id here", "image_id": "003a8ae2ef43b901", "answers": ["a"] * 10},
        {"question_id": 34602, "question": "duplicate", "image_id": "003a8ae2ef43b901", "answers": ["a"] * 10},
        {"question_id": 34605, "question": "test-split style, no answers", "image_id": "003a8ae2ef43b901"},
    ]})
    return root


def docvqa_src(root: Path) -> Path:
    image(root / "documents" / "pybv0228_81.png")
    image(root / "documents" / "nkbl0226_1.png", "gray")
    image(root / "outside.png")
    write_json(root / "val_v1.0.json", {"dataset_name": "docvqa", "dataset_split": "val", "data": [
        {"questionId": 49153, "question": "What is the ‘actual’ value per 1000, during the year 1975?",
         "image": "documents/pybv0228_81.png", "docId": 14465, "answers": ["0.28"]},
        {"questionId": 24581, "question": "What is name of university?", "image": "documents/nkbl0226_1.png",
         "answers": ["university of california", "University of California"]},
        {"questionId": 24582, "question": "q", "image": "../outside.png", "answers": ["x"]},
        {"questionId": 24583, "question": "q", "image": "documents/missing.png", "answers": ["x"]},
        {"questionId": 24584, "question": "q", "image": "documents/nkbl0226_1.png", "answers": [1, 2]},
        "not a record",
    ]})
    return root


BUILDERS = {"chartqa": chartqa_src, "ocrbench": ocrbench_src, "textvqa": textvqa_src, "docvqa": docvqa_src}


def read_items(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "items.jsonl").read_text(encoding="utf-8").splitlines()]


def assert_images_open(out: Path, items: list[dict]) -> None:
    for item in items:
        path = out / item["image"]  # the runner resolves paths against the items.jsonl folder
        assert item["image"].startswith("images/") and path.is_file()
        with Image.open(path) as img:
            img.load()


def reasons(summary: dict) -> dict[str, str]:
    return dict(s.split(": ", 1) for s in summary["skipped_items"])


def test_chartqa(tmp_path):
    summary = convert("chartqa", chartqa_src(tmp_path / "src"), tmp_path / "out")
    items = read_items(tmp_path / "out")
    assert items == [
        {"id": "chartqa-human-000000", "image": "images/a.png", "question": "What is the max?", "answers": ["42"],
         "type": "human_test"},
        {"id": "chartqa-human-000001", "image": "images/b.png", "question": "Which year?", "answers": ["2019"],
         "type": "human_test"},
        {"id": "chartqa-augmented-000000", "image": "images/b.png", "question": "Is it rising?", "answers": ["Yes"],
         "type": "augmented_test"},
    ]
    assert_images_open(tmp_path / "out", items)
    assert summary["n"] == 3 and summary["skipped"] == 4 and summary["format"] == "chartqa"
    assert summary["files"] == ["test_human.json", "test_augmented.json"]
    why = reasons(summary)
    assert why["chartqa-human-000002"].startswith("image not found: gone.png (looked in png/")
    assert why["chartqa-human-000003"] == "no answers (field 'label' missing)"
    assert why["chartqa-human-000004"] == "field 'query' is int, expected a string"
    assert why["chartqa-augmented-000001"].startswith("cannot decode image broken.png (UnidentifiedImageError")


def test_chartqa_reads_one_split_alone(tmp_path):
    src = chartqa_src(tmp_path / "src")
    (src / "test_human.json").unlink()
    summary = convert("chartqa", src, tmp_path / "out")
    assert summary["files"] == ["test_augmented.json"]
    assert [it["type"] for it in read_items(tmp_path / "out")] == ["augmented_test"]


def test_ocrbench(tmp_path):
    summary = convert("ocrbench", ocrbench_src(tmp_path / "src"), tmp_path / "out")
    items = read_items(tmp_path / "out")
    assert items == [
        {"id": "ocrbench-000000", "image": "images/IIIT5K/test/1.png", "question": "what is written in the image?",
         "answers": ["CENTRE"], "category": "Regular Text Recognition", "dataset": "IIIT5K"},
        {"id": "ocrbench-000001", "image": "images/HME100K/test_images/2.jpg",
         "question": "Please write out the expression of the formula in the image using LaTeX format.",
         "answers": ["x _ { 1 } = 0\n", "x _ 1 = 0\n"],  # verbatim: the metric does its own normalisation
         "category": "Handwritten Mathematical Expression Recognition", "dataset": "HME100k"},
    ]
    assert_images_open(tmp_path / "out", items)
    # The task fields are exactly what the metric takes.
    hme = items[1]
    assert score("ocrbench", "x_{1}=0", hme["answers"], dataset=hme["dataset"], category=hme["category"]) == 1.0
    assert summary["skipped"] == 4
    assert reasons(summary) == {
        "ocrbench-000002": "unknown category 'Text Recognition' in field 'type'",
        "ocrbench-000003": f"image not found: IIIT5K/test/9.png (looked in OCRBench_Images/, ./ of {tmp_path / 'src'})",
        "ocrbench-000004": "no answers (field 'answers' is empty)",
        "ocrbench-000005": "field 'question' missing",
    }


@pytest.mark.parametrize("image_dir", ["train_images", "train_val_images/train_images"])
def test_textvqa(tmp_path, image_dir):
    summary = convert("textvqa", textvqa_src(tmp_path / "src", image_dir), tmp_path / "out")
    items = read_items(tmp_path / "out")
    assert items == [
        {"id": "textvqa-34602", "image": "images/003a8ae2ef43b901.jpg", "question": "what brand is this?",
         "answers": TEXTVQA_ANSWERS, "variant": "textvqa"},
        {"id": "textvqa-34603", "image": "images/003a8ae2ef43b901.jpg", "question": "what colour is the logo?",
         "answers": ["white"] * 10, "variant": "textvqa"},
    ]
    assert_images_open(tmp_path / "out", items)
    assert score("vqa_accuracy", "Nike", items[0]["answers"], variant=items[0]["variant"]) == 1.0
    assert summary["skipped"] == 4
    why = reasons(summary)
    assert why["textvqa-34604"].startswith("cannot decode image 00b2c8a5e4c6f2d1.jpg")
    assert why["TextVQA_0.5.1_val.json[3]"] == "field 'question_id' missing or not an int/string"
    assert why["textvqa-34602"] == "duplicate id"
    assert why["textvqa-34605"] == "no answers (field 'answers' missing)"


def test_docvqa(tmp_path):
    summary = convert("docvqa", docvqa_src(tmp_path / "src"), tmp_path / "out")
    items = read_items(tmp_path / "out")
    assert items == [
        {"id": "docvqa-49153", "image": "images/documents/pybv0228_81.png",
         "question": "What is the ‘actual’ value per 1000, during the year 1975?", "answers": ["0.28"]},
        {"id": "docvqa-24581", "image": "images/documents/nkbl0226_1.png", "question": "What is name of university?",
         "answers": ["university of california", "University of California"]},
    ]
    assert_images_open(tmp_path / "out", items)
    assert "‘actual’" in (tmp_path / "out" / "items.jsonl").read_text(encoding="utf-8")  # UTF-8, not \u escapes
    assert summary["skipped"] == 4
    why = reasons(summary)
    assert why["docvqa-24582"] == "image path '../outside.png' leaves the image folder"
    assert why["docvqa-24583"].startswith("image not found: documents/missing.png")
    assert why["docvqa-24584"] == "field 'answers' is list, expected a string or a list of strings"
    assert why["val_v1.0.json[5]"] == "record is str, expected an object"


@pytest.mark.parametrize("fmt", sorted(BUILDERS))
def test_output_is_deterministic_and_reruns_in_place(tmp_path, fmt):
    src = BUILDERS[fmt](tmp_path / "src")
    first = convert(fmt, src, tmp_path / "a")
    convert(fmt, src, tmp_path / "b")
    again = convert(fmt, src, tmp_path / "a")  # over its own earlier output
    items = (tmp_path / "a" / "items.jsonl").read_bytes()
    assert items == (tmp_path / "b" / "items.jsonl").read_bytes()
    assert first == again and not (tmp_path / "a" / "items.jsonl.tmp").exists()
    assert_images_open(tmp_path / "a", read_items(tmp_path / "a"))


def test_images_are_hard_linked_once_per_file(tmp_path):
    src = textvqa_src(tmp_path / "src")
    convert("textvqa", src, tmp_path / "out")
    placed = tmp_path / "out" / "images" / "003a8ae2ef43b901.jpg"
    assert os.path.samefile(placed, src / "train_images" / "003a8ae2ef43b901.jpg")
    assert sorted(p.name for p in (tmp_path / "out" / "images").iterdir()) == ["003a8ae2ef43b901.jpg"]


def test_images_are_copied_where_links_are_refused(tmp_path, monkeypatch):
    def refuse(*_):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", refuse)
    src = docvqa_src(tmp_path / "src")
    convert("docvqa", src, tmp_path / "out")
    placed, original = tmp_path / "out" / "images" / "documents" / "nkbl0226_1.png", src / "documents" / "nkbl0226_1.png"
    assert not os.path.samefile(placed, original) and placed.read_bytes() == original.read_bytes()


def test_unknown_format_lists_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="valid formats: chartqa, ocrbench, textvqa, docvqa"):
        convert("mmmu", tmp_path, tmp_path / "out")
    assert sorted(READERS) == sorted(BUILDERS)


@pytest.mark.parametrize("fmt, expected", [
    ("chartqa", "test_human.json and/or test_augmented.json"),
    ("ocrbench", "OCRBench.json"),
    ("textvqa", "TextVQA_0.5.1_val.json"),
    ("docvqa", "val_v1.0.json"),
])
def test_missing_source_names_the_expected_files(tmp_path, fmt, expected):
    with pytest.raises(FileNotFoundError, match=f"expected {expected}"):
        convert(fmt, tmp_path / "nowhere", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content, message", [
    ("[{broken", "invalid JSON"),
    ('{"questions": []}', "expected an object with a 'data' list"),
])
def test_unreadable_annotation_file_is_an_error(tmp_path, content, message):
    (tmp_path / "val_v1.0.json").write_text(content)
    with pytest.raises(ValueError, match=message):
        convert("docvqa", tmp_path, tmp_path / "out")
