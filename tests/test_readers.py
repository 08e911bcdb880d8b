"""Public benchmark sources (own releases, Hugging Face parquet snapshots) -> items.jsonl: exact items,
images reachable from OUT, bad records reported, a run that yields nothing an error."""
import hashlib
import io
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mmllm.cli import main
from mmllm.eval.metrics import score
from mmllm.eval.readers import READERS, Conversion, convert


def image(path: Path, colour: str = "white") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), colour).save(path)  # format from the suffix: .png or .jpg


def garbage(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not an image at all")


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
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


def ocrbench_src(root: Path, json_dir: str = ".", image_dir: str = "OCRBench_Images") -> Path:
    """Flat copy by default; ("OCRBench", "OCRBench_Images") is the benchmark repository's own layout."""
    image(root / image_dir / "IIIT5K" / "test" / "1.png")
    image(root / image_dir / "HME100K" / "test_images" / "2.jpg")
    write_json(root / json_dir / "OCRBench.json", [
        # OCRBench's own ids repeat across source datasets (211 here twice): ours add the dataset's name.
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

# Hugging Face snapshots, with the column names and types of lmms-lab/ChartQA, echo840/OCRBench,
# lmms-lab/textvqa and lmms-lab/DocVQA; an `Image` column is a {"bytes", "path"} struct.
HF_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
STRINGS = pa.list_(pa.string())


def png(colour: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), colour).save(buf, format="PNG")
    return buf.getvalue()


def hf_image(data: bytes | None, name: str = "image.png") -> dict:
    return {"bytes": data, "path": name}


def placed(data: bytes) -> str:
    """Where an embedded image lands in OUT: named by its content."""
    return f"images/{hashlib.sha256(data).hexdigest()[:16]}.png"


def write_parquet(path: Path, schema: list[tuple[str, pa.DataType]], rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema(schema + [("image", HF_IMAGE)])), path)


def chartqa_hf(root: Path) -> Path:
    schema = [("type", pa.string()), ("question", pa.string()), ("answer", pa.string())]
    write_parquet(root / "data" / "test-00000-of-00002.parquet", schema, [
        {"type": "human_test", "question": "What is the max?", "answer": "42", "image": hf_image(png("red"))},
        {"type": "augmented_test", "question": "Is it rising?", "answer": "Yes", "image": hf_image(png("blue"))},
        {"type": "human_test", "question": "q", "answer": "1", "image": hf_image(b"not an image at all")},
    ])
    write_parquet(root / "data" / "test-00001-of-00002.parquet", schema, [
        {"type": "val", "question": "q", "answer": "1", "image": hf_image(png("red"))},
        {"type": "human_test", "question": "Which year?", "answer": "2019", "image": hf_image(png("red"))},
    ])
    return root


def ocrbench_hf(root: Path) -> Path:
    schema = [("dataset", pa.string()), ("question", pa.string()), ("question_type", pa.string()), ("answer", STRINGS)]
    write_parquet(root / "data" / "test-00000-of-00001.parquet", schema, [
        # Both images are named 1.png in the struct, as basenames from different source datasets can be.
        {"dataset": "IIIT5K", "question": "what is written in the image?", "question_type": "Regular Text Recognition",
         "answer": ["CENTRE"], "image": hf_image(png("white"), "1.png")},
        {"dataset": "HME100k", "question": "Write the formula in LaTeX.",
         "question_type": "Handwritten Mathematical Expression Recognition", "answer": ["x _ { 1 } = 0\n"],
         "image": hf_image(png("gray"), "1.png")},
        {"dataset": "IIIT5K", "question": "q", "question_type": "Regular Text Recognition", "answer": ["A"],
         "image": hf_image(None, "2.png")},
        {"dataset": "IIIT5K", "question": "q", "question_type": "Text Recognition", "answer": ["A"],
         "image": hf_image(png("white"))},
    ])
    return root


def textvqa_hf(root: Path) -> Path:
    """SRC is the snapshot's data/ folder itself; only the validation split is read."""
    schema = [("image_id", pa.string()), ("question_id", pa.int32()), ("question", pa.string()), ("answers", STRINGS)]
    green = hf_image(png("green"))
    write_parquet(root / "validation-00000-of-00002.parquet", schema, [
        {"image_id": "003a8ae2ef43b901", "question_id": 34602, "question": "what brand is this?",
         "answers": TEXTVQA_ANSWERS, "image": green},
    ])
    write_parquet(root / "validation-00001-of-00002.parquet", schema, [
        {"image_id": "003a8ae2ef43b901", "question_id": 34603, "question": "what colour is the logo?",
         "answers": ["white"] * 10, "image": green},
        {"image_id": "003a8ae2ef43b901", "question_id": 34602, "question": "duplicate", "answers": ["a"] * 10,
         "image": green},
    ])
    write_parquet(root / "test-00000-of-00001.parquet", schema, [
        {"image_id": "0a", "question_id": 1, "question": "test split", "answers": None, "image": green},
    ])
    return root


def docvqa_hf(root: Path) -> Path:
    """A hub cache snapshot: shards are relative symlinks into blobs/; InfographicVQA/ is another config."""
    schema = [("questionId", pa.string()), ("question", pa.string()), ("answers", STRINGS), ("docId", pa.int64())]
    write_parquet(root / "blobs" / "9f2c", schema, [
        {"questionId": "49153", "question": "What is the ‘actual’ value per 1000, during the year 1975?",
         "answers": ["0.28"], "docId": 14465, "image": hf_image(png("white"))},
        {"questionId": "24581", "question": "What is name of university?",
         "answers": ["university of california", "University of California"], "docId": 7,
         "image": hf_image(png("gray"))},
        {"questionId": "24584", "question": "q", "answers": [], "docId": 7, "image": hf_image(png("gray"))},
    ])
    snapshot = root / "snapshots" / "rev"
    (snapshot / "DocVQA").mkdir(parents=True)
    (snapshot / "DocVQA" / "validation-00000-of-00001.parquet").symlink_to("../../../blobs/9f2c")
    write_parquet(snapshot / "InfographicVQA" / "validation-00000-of-00001.parquet", schema, [
        {"questionId": "1", "question": "infographic", "answers": ["x"], "docId": 1, "image": hf_image(png("red"))},
    ])
    return snapshot


HF_BUILDERS = {"chartqa": chartqa_hf, "ocrbench": ocrbench_hf, "textvqa": textvqa_hf, "docvqa": docvqa_hf}
SOURCES = [pytest.param(fmt, build, id=f"{fmt}-{kind}")
           for kind, builders in (("release", BUILDERS), ("hf", HF_BUILDERS)) for fmt, build in builders.items()]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def read_items(out: Path) -> list[dict]:
    return read_jsonl(out / "items.jsonl")


def assert_images_open(out: Path, items: list[dict]) -> None:
    for item in items:
        path = out / item["image"]  # the runner resolves paths against the items.jsonl folder
        assert item["image"].startswith("images/") and path.is_file()
        with Image.open(path) as img:
            img.load()


def reasons(summary: Conversion) -> dict[str, str]:
    return {skip.id: skip.reason for skip in summary.skipped}


def test_chartqa(tmp_path):
    summary = convert("chartqa", chartqa_src(tmp_path / "src"), tmp_path / "out", max_skipped=1)
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
    assert summary.n == 3 and len(summary.skipped) == 4 and summary.format == "chartqa"
    assert summary.files == ["test_human.json", "test_augmented.json"]
    why = reasons(summary)
    assert why["chartqa-human-000002"] == f"image not found: gone.png (looked in {tmp_path / 'src' / 'png'})"
    assert why["chartqa-human-000003"] == "no answers (field 'label' missing)"
    assert why["chartqa-human-000004"] == "field 'query' is int, expected a string"
    assert why["chartqa-augmented-000001"].startswith("cannot decode image broken.png (UnidentifiedImageError")


def test_chartqa_reads_one_split_alone(tmp_path):
    src = chartqa_src(tmp_path / "src")
    (src / "test_human.json").unlink()
    summary = convert("chartqa", src, tmp_path / "out", max_skipped=1)
    assert summary.files == ["test_augmented.json"]
    assert [it["type"] for it in read_items(tmp_path / "out")] == ["augmented_test"]


def test_ocrbench(tmp_path):
    summary = convert("ocrbench", ocrbench_src(tmp_path / "src"), tmp_path / "out", max_skipped=1)
    items = read_items(tmp_path / "out")
    assert items == [
        {"id": "ocrbench-IIIT5K-211", "image": "images/IIIT5K/test/1.png", "question": "what is written in the image?",
         "answers": ["CENTRE"], "category": "Regular Text Recognition", "dataset": "IIIT5K"},
        {"id": "ocrbench-HME100k-211", "image": "images/HME100K/test_images/2.jpg",
         "question": "Please write out the expression of the formula in the image using LaTeX format.",
         "answers": ["x _ { 1 } = 0\n", "x _ 1 = 0\n"],  # verbatim: the metric does its own normalisation
         "category": "Handwritten Mathematical Expression Recognition", "dataset": "HME100k"},
    ]
    assert_images_open(tmp_path / "out", items)
    # The task fields are exactly what the metric takes.
    hme = items[1]
    assert score("ocrbench", "x_{1}=0", hme["answers"], dataset=hme["dataset"], category=hme["category"]) == 1.0
    assert len(summary.skipped) == 4
    assert reasons(summary) == {
        "ocrbench-IIIT5K-3": "unknown category 'Text Recognition' in field 'type'",
        "ocrbench-IIIT5K-4": "image not found: IIIT5K/test/9.png (looked in "
                           f"{tmp_path}/src/OCRBench_Images, {tmp_path}/src, {tmp_path}/OCRBench_Images)",
        "ocrbench-IIIT5K-5": "no answers (field 'answers' is empty)",
        "ocrbench-IIIT5K-6": "field 'question' missing",
    }


@pytest.mark.parametrize("image_dir", ["train_images", "train_val_images/train_images"])
def test_textvqa(tmp_path, image_dir):
    summary = convert("textvqa", textvqa_src(tmp_path / "src", image_dir), tmp_path / "out", max_skipped=1)
    items = read_items(tmp_path / "out")
    assert items == [
        {"id": "textvqa-34602", "image": "images/003a8ae2ef43b901.jpg", "question": "what brand is this?",
         "answers": TEXTVQA_ANSWERS, "variant": "textvqa"},
        {"id": "textvqa-34603", "image": "images/003a8ae2ef43b901.jpg", "question": "what colour is the logo?",
         "answers": ["white"] * 10, "variant": "textvqa"},
    ]
    assert_images_open(tmp_path / "out", items)
    assert score("vqa_accuracy", "Nike", items[0]["answers"], variant=items[0]["variant"]) == 1.0
    assert len(summary.skipped) == 4
    why = reasons(summary)
    assert why["textvqa-34604"].startswith("cannot decode image 00b2c8a5e4c6f2d1.jpg")
    assert why["TextVQA_0.5.1_val.json[3]"] == "field 'question_id' missing or not an int/string"
    assert why["textvqa-34602"] == "duplicate id"
    assert why["textvqa-34605"] == "no answers (field 'answers' missing)"


def test_docvqa(tmp_path):
    summary = convert("docvqa", docvqa_src(tmp_path / "src"), tmp_path / "out", max_skipped=1)
    items = read_items(tmp_path / "out")
    assert items == [
        {"id": "docvqa-49153", "image": "images/documents/pybv0228_81.png",
         "question": "What is the ‘actual’ value per 1000, during the year 1975?", "answers": ["0.28"]},
        {"id": "docvqa-24581", "image": "images/documents/nkbl0226_1.png", "question": "What is name of university?",
         "answers": ["university of california", "University of California"]},
    ]
    assert_images_open(tmp_path / "out", items)
    assert "‘actual’" in (tmp_path / "out" / "items.jsonl").read_text(encoding="utf-8")  # UTF-8, not \u escapes
    assert len(summary.skipped) == 4
    why = reasons(summary)
    assert why["docvqa-24582"] == "image path '../outside.png' leaves the image folder"
    assert why["docvqa-24583"].startswith("image not found: documents/missing.png")
    assert why["docvqa-24584"] == "field 'answers' is list, expected a string or a list of strings"
    assert why["val_v1.0.json[5]"] == "record is str, expected an object"


@pytest.mark.parametrize("fmt, build", SOURCES)
def test_output_is_deterministic_and_reruns_in_place(tmp_path, fmt, build):
    src = build(tmp_path / "src")
    first = convert(fmt, src, tmp_path / "a", max_skipped=1)
    convert(fmt, src, tmp_path / "b", max_skipped=1)
    again = convert(fmt, src, tmp_path / "a", max_skipped=1)  # over its own earlier output
    items = (tmp_path / "a" / "items.jsonl").read_bytes()
    assert items == (tmp_path / "b" / "items.jsonl").read_bytes()
    assert first == again and not (tmp_path / "a" / "items.jsonl.tmp").exists()
    assert_images_open(tmp_path / "a", read_items(tmp_path / "a"))


def test_images_are_hard_linked_once_per_file(tmp_path):
    src = textvqa_src(tmp_path / "src")
    convert("textvqa", src, tmp_path / "out", max_skipped=1)
    placed = tmp_path / "out" / "images" / "003a8ae2ef43b901.jpg"
    assert os.path.samefile(placed, src / "train_images" / "003a8ae2ef43b901.jpg")
    assert sorted(p.name for p in (tmp_path / "out" / "images").iterdir()) == ["003a8ae2ef43b901.jpg"]


def test_images_are_copied_where_links_are_refused(tmp_path, monkeypatch):
    def refuse(*_):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", refuse)
    src = docvqa_src(tmp_path / "src")
    convert("docvqa", src, tmp_path / "out", max_skipped=1)
    placed, original = tmp_path / "out" / "images" / "documents" / "nkbl0226_1.png", src / "documents" / "nkbl0226_1.png"
    assert not os.path.samefile(placed, original) and placed.read_bytes() == original.read_bytes()


def test_unknown_format_lists_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="valid formats: chartqa, ocrbench, textvqa, docvqa"):
        convert("mmmu", tmp_path, tmp_path / "out")
    assert sorted(READERS) == sorted(BUILDERS)


@pytest.mark.parametrize("fmt, expected", [
    ("chartqa", "test_human.json and/or test_augmented.json, or test-*.parquet (in SRC or data/)"),
    ("ocrbench", "OCRBench.json (in SRC or OCRBench/), or test-*.parquet (in SRC or data/)"),
    ("textvqa", "TextVQA_0.5.1_val.json, or validation-*.parquet (in SRC or data/)"),
    ("docvqa", "val_v1.0.json, or validation-*.parquet (in SRC or DocVQA/)"),
])
def test_missing_source_names_the_expected_files(tmp_path, fmt, expected):
    with pytest.raises(FileNotFoundError) as exc:
        convert(fmt, tmp_path / "nowhere", tmp_path / "out")
    assert str(exc.value) == f"no {fmt} annotations in {tmp_path / 'nowhere'}: expected {expected}"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name, content, message", [
    ("val_v1.0.json", b"[{broken", "invalid JSON"),
    ("val_v1.0.json", b'{"questions": []}', "expected an object with a 'data' list"),
    ("val_v1.0.json", b"\xff[]", r"invalid UTF-8 \(byte 0xff at offset 0\)"),
    ("validation-00000-of-00001.parquet", b"not parquet", "unreadable parquet"),
])
def test_unreadable_annotation_file_is_an_error(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=message):
        convert("docvqa", tmp_path, tmp_path / "out")


def test_annotation_file_starting_with_a_utf8_bom_is_read(tmp_path):
    src = docvqa_src(tmp_path / "src")
    convert("docvqa", src, tmp_path / "plain", max_skipped=1)
    annotations = src / "val_v1.0.json"
    annotations.write_bytes(b"\xef\xbb\xbf" + annotations.read_bytes())  # as Windows editors save it
    summary = convert("docvqa", src, tmp_path / "bom", max_skipped=1)
    assert summary.n == 2 and len(summary.skipped) == 4
    assert (tmp_path / "bom" / "items.jsonl").read_bytes() == (tmp_path / "plain" / "items.jsonl").read_bytes()


def test_source_that_yields_no_item_is_an_error_and_writes_nothing(tmp_path):
    write_json(tmp_path / "src" / "OCRBench.json", [])
    with pytest.raises(ValueError) as exc:
        convert("ocrbench", tmp_path / "src", tmp_path / "out")
    assert str(exc.value) == f"wrote no items: 0 skipped (no records in {tmp_path / 'src'})"
    assert not (tmp_path / "out").exists()


def test_symlinked_image_is_placed_as_the_real_file(tmp_path):
    """Hub snapshots are relative symlinks into blobs/: OUT must hold the file, not a link that dangles there."""
    src = textvqa_src(tmp_path / "src")
    link = src / "train_images" / "003a8ae2ef43b901.jpg"
    (src / "blobs").mkdir()
    link.rename(src / "blobs" / "5e1f")
    link.symlink_to("../blobs/5e1f")
    assert convert("textvqa", src, tmp_path / "out", max_skipped=1).n == 2
    placed = tmp_path / "out" / "images" / "003a8ae2ef43b901.jpg"
    assert not placed.is_symlink() and os.path.samefile(placed, src / "blobs" / "5e1f")
    (src / "blobs" / "5e1f").unlink()  # OUT stays whole without SRC
    assert_images_open(tmp_path / "out", read_items(tmp_path / "out"))


@pytest.mark.parametrize("src, files", [("OCRBench", ["OCRBench.json"]), (".", ["OCRBench/OCRBench.json"])])
def test_ocrbench_repository_layout_finds_the_sibling_image_folder(tmp_path, src, files):
    """MultimodalOCR keeps OCRBench/OCRBench.json beside OCRBench_Images/; SRC may be either folder holding the JSON."""
    root = ocrbench_src(tmp_path / "repo", json_dir="OCRBench", image_dir="OCRBench_Images")
    summary = convert("ocrbench", root / src, tmp_path / "out", max_skipped=1)
    assert summary.files == files and summary.n == 2 and len(summary.skipped) == 4
    assert [(it["id"], it["image"]) for it in read_items(tmp_path / "out")] == [
        ("ocrbench-IIIT5K-211", "images/IIIT5K/test/1.png"), ("ocrbench-HME100k-211", "images/HME100K/test_images/2.jpg")]
    assert_images_open(tmp_path / "out", read_items(tmp_path / "out"))


def convert_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.delenv("MMLLM_DEBUG", raising=False)
    rc = main(["data", "convert", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_convert_that_writes_no_item_exits_1_with_the_first_reason(tmp_path, monkeypatch, capsys):
    src = ocrbench_src(tmp_path / "src", image_dir="pictures")  # where no layout looks
    rc, out, err = convert_cli(monkeypatch, capsys, "--format", "ocrbench", "--src", src, "--out", tmp_path / "out")
    assert (rc, out) == (1, "")
    assert err == ("mmllm: error: ValueError: wrote no items: 6 skipped; first: ocrbench-IIIT5K-211: image not found: "
                   f"IIIT5K/test/1.png (looked in {src}/OCRBench_Images, {src}, {tmp_path}/OCRBench_Images) "
                   f"(all in {tmp_path}/out/skipped.jsonl)\n")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["skipped.jsonl"]


def test_cli_images_option_overrides_where_images_are_looked_up(tmp_path, monkeypatch, capsys):
    src = ocrbench_src(tmp_path / "src", image_dir="pictures")
    out_dir = tmp_path / "out"
    rc, out, err = convert_cli(monkeypatch, capsys, "--format", "ocrbench", "--src", src, "--out", out_dir,
                               "--images", src / "pictures", "--max_skipped", "1")
    assert (rc, err) == (0, "")
    assert out == (f"wrote 2 ocrbench items to {out_dir} from OCRBench.json; skipped 4 (1 unknown category "
                   "'Text Recognition' in field 'type', 1 image not found, 1 no answers (field 'answers' is empty), "
                   f"1 field 'question' missing; listed in {out_dir}/skipped.jsonl)\n")
    assert read_jsonl(out_dir / "skipped.jsonl")[1] == {
        "id": "ocrbench-IIIT5K-4", "reason": f"image not found: IIIT5K/test/9.png (looked in {src}/pictures)"}
    assert [it["image"] for it in read_items(out_dir)] == ["images/IIIT5K/test/1.png",
                                                           "images/HME100K/test_images/2.jpg"]
    assert_images_open(out_dir, read_items(out_dir))


@pytest.mark.parametrize("fmt, build, error", [
    ("ocrbench", ocrbench_src, "FileNotFoundError: image folder not found: {tmp}/pictures"),
    ("chartqa", chartqa_hf,
     "ValueError: the chartqa source in {tmp}/src embeds its images: an image folder does not apply"),
])
def test_cli_images_option_is_checked(tmp_path, monkeypatch, capsys, fmt, build, error):
    rc, out, err = convert_cli(monkeypatch, capsys, "--format", fmt, "--src", build(tmp_path / "src"),
                               "--out", tmp_path / "out", "--images", tmp_path / "pictures")
    assert (rc, out, err) == (1, "", f"mmllm: error: {error.format(tmp=tmp_path)}\n")
    assert not (tmp_path / "out").exists()


def test_chartqa_hf_snapshot(tmp_path):
    summary = convert("chartqa", chartqa_hf(tmp_path / "src"), tmp_path / "out", max_skipped=1)
    items = read_items(tmp_path / "out")
    red, blue = placed(png("red")), placed(png("blue"))
    assert items == [
        {"id": "chartqa-test-000000", "image": red, "question": "What is the max?", "answers": ["42"],
         "type": "human_test"},
        {"id": "chartqa-test-000001", "image": blue, "question": "Is it rising?", "answers": ["Yes"],
         "type": "augmented_test"},
        # Positions run on across the shards of the split.
        {"id": "chartqa-test-000004", "image": red, "question": "Which year?", "answers": ["2019"],
         "type": "human_test"},
    ]
    assert_images_open(tmp_path / "out", items)
    assert sorted(os.listdir(tmp_path / "out" / "images")) == sorted(p.removeprefix("images/") for p in (red, blue))
    assert summary.files == ["data/test-00000-of-00002.parquet", "data/test-00001-of-00002.parquet"]
    assert reasons(summary) == {
        "chartqa-test-000002": "cannot decode embedded image (UnidentifiedImageError: cannot identify image file "
                               "<embedded image>)",
        "chartqa-test-000003": "unknown split 'val' in field 'type'",
    }


def test_ocrbench_hf_snapshot(tmp_path):
    summary = convert("ocrbench", ocrbench_hf(tmp_path / "src"), tmp_path / "out", max_skipped=1)
    items = read_items(tmp_path / "out")
    assert items == [
        {"id": "ocrbench-test-000000", "image": placed(png("white")), "question": "what is written in the image?",
         "answers": ["CENTRE"], "category": "Regular Text Recognition", "dataset": "IIIT5K"},
        {"id": "ocrbench-test-000001", "image": placed(png("gray")), "question": "Write the formula in LaTeX.",
         "answers": ["x _ { 1 } = 0\n"], "category": "Handwritten Mathematical Expression Recognition",
         "dataset": "HME100k"},
    ]  # both named 1.png in the snapshot, two files in OUT
    assert_images_open(tmp_path / "out", items)
    hme = items[1]
    assert score("ocrbench", "x_{1}=0", hme["answers"], dataset=hme["dataset"], category=hme["category"]) == 1.0
    assert reasons(summary) == {
        "ocrbench-test-000002": "field 'image' holds no embedded image bytes",
        "ocrbench-test-000003": "unknown category 'Text Recognition' in field 'question_type'",
    }


def test_textvqa_hf_snapshot_read_from_its_data_folder(tmp_path):
    summary = convert("textvqa", textvqa_hf(tmp_path / "data"), tmp_path / "out", max_skipped=1)
    green = placed(png("green"))
    assert read_items(tmp_path / "out") == [
        {"id": "textvqa-34602", "image": green, "question": "what brand is this?", "answers": TEXTVQA_ANSWERS,
         "variant": "textvqa"},
        {"id": "textvqa-34603", "image": green, "question": "what colour is the logo?", "answers": ["white"] * 10,
         "variant": "textvqa"},
    ]
    assert summary.files == ["validation-00000-of-00002.parquet", "validation-00001-of-00002.parquet"]
    assert [str(skip) for skip in summary.skipped] == ["textvqa-34602: duplicate id"]
    assert os.listdir(tmp_path / "out" / "images") == [green.removeprefix("images/")]


def test_docvqa_hf_snapshot_reads_only_its_config(tmp_path):
    summary = convert("docvqa", docvqa_hf(tmp_path / "hub"), tmp_path / "out", max_skipped=1)
    items = read_items(tmp_path / "out")
    assert items == [
        {"id": "docvqa-49153", "image": placed(png("white")),
         "question": "What is the ‘actual’ value per 1000, during the year 1975?", "answers": ["0.28"]},
        {"id": "docvqa-24581", "image": placed(png("gray")), "question": "What is name of university?",
         "answers": ["university of california", "University of California"]},
    ]
    assert_images_open(tmp_path / "out", items)
    assert summary.files == ["DocVQA/validation-00000-of-00001.parquet"]
    assert [str(skip) for skip in summary.skipped] == ["docvqa-24584: no answers (field 'answers' is empty)"]


def missing_most_images(root: Path, n: int = 40) -> Path:
    """An OCRBench release of `n` records whose images are all missing but two."""
    image(root / "OCRBench_Images" / "a.png")
    records = [{"dataset_name": "IIIT5K", "id": i, "image_path": "a.png" if i < 2 else f"gone/{i}.png",
                "question": "q", "answers": "A", "type": "Regular Text Recognition"} for i in range(n)]
    write_json(root / "OCRBench.json", records)
    return root


def test_cli_convert_missing_most_images_fails_in_one_line_and_lists_every_skip_in_a_file(
        tmp_path, monkeypatch, capsys):
    src, out_dir = missing_most_images(tmp_path / "src"), tmp_path / "out"
    rc, out, err = convert_cli(monkeypatch, capsys, "--format", "ocrbench", "--src", src, "--out", out_dir)
    assert (rc, out) == (1, "")
    assert err == ("mmllm: error: ValueError: 38 of 40 records skipped (95.0%), over max_skipped 5.0%; items.jsonl "
                   f"not written; first: ocrbench-IIIT5K-2: image not found: gone/2.png (looked in "
                   f"{src}/OCRBench_Images, {src}, {tmp_path}/OCRBench_Images) "
                   f"(all in {out_dir}/skipped.jsonl; --max_skipped 1 keeps the rest)\n")
    assert [row["id"] for row in read_jsonl(out_dir / "skipped.jsonl")] == [f"ocrbench-IIIT5K-{i}" for i in range(2, 40)]
    assert not (out_dir / "items.jsonl").exists()
    rc, out, err = convert_cli(monkeypatch, capsys, "--format", "ocrbench", "--src", src, "--out", out_dir,
                               "--max_skipped", "0.95")
    assert (rc, err, len(out.splitlines())) == (0, "", 1)
    assert [it["id"] for it in read_items(out_dir)] == ["ocrbench-IIIT5K-0", "ocrbench-IIIT5K-1"]


def test_a_conversion_with_no_skip_leaves_no_skip_list_of_an_earlier_one(tmp_path):
    src = missing_most_images(tmp_path / "src")
    convert("ocrbench", src, tmp_path / "out", max_skipped=1)
    assert (tmp_path / "out" / "skipped.jsonl").is_file()
    write_json(src / "OCRBench.json", json.loads((src / "OCRBench.json").read_text())[:2])
    assert convert("ocrbench", src, tmp_path / "out").skipped == []
    assert not (tmp_path / "out" / "skipped.jsonl").exists()


def test_ocrbench_ids_are_its_own_with_the_dataset_name_and_a_repeated_one_is_a_skip(tmp_path):
    src = missing_most_images(tmp_path / "src", n=2)
    records = json.loads((src / "OCRBench.json").read_text())
    write_json(src / "OCRBench.json", [*records, records[1], {**records[0], "id": None}])
    summary = convert("ocrbench", src, tmp_path / "out", max_skipped=1)
    assert [it["id"] for it in read_items(tmp_path / "out")] == ["ocrbench-IIIT5K-0", "ocrbench-IIIT5K-1"]
    assert [str(skip) for skip in summary.skipped] == [
        "ocrbench-IIIT5K-1: duplicate id", "OCRBench.json[3]: field 'id' missing or not an int/string"]


def test_max_skipped_must_be_a_fraction(tmp_path):
    with pytest.raises(ValueError, match=r"max_skipped must be a fraction in \[0, 1\], got 5"):
        convert("ocrbench", tmp_path, tmp_path / "out", max_skipped=5)


def test_convert_draws_a_progress_bar_on_a_terminal_only(tmp_path, monkeypatch, as_terminal):
    terminal = as_terminal(monkeypatch)
    convert("ocrbench", missing_most_images(tmp_path / "src", n=2), tmp_path / "out")
    assert "convert OCRBench.json: " in terminal.getvalue()
