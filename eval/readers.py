"""Readers that turn public benchmark layouts (ChartQA, OCRBench, TextVQA, DocVQA) into our eval format.

`convert(fmt, src, out)` writes `out/items.jsonl`, one `{"id", "image", "question", "answers", ...task
fields}` object a line, with each image under `out/images/` at its path below the benchmark's image
folder. A format only declares where its files are and which of its fields feed ours (a `Layout`);
checking records and images, reporting bad ones and writing are shared by all four.

Images are hard-linked, and copied with `shutil.copy2` only where the filesystem refuses a link
(another device, no link support). Not symlinked: a hard link costs no disk, yet OUT stays whole when
SRC is moved or deleted and archives as plain files.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image

from .metrics import OCRBENCH_CATEGORIES


class Malformed(ValueError):
    """A record or its image that cannot become an item: reported with its id and skipped."""


@dataclass(frozen=True)
class Fields:
    """What a format's parser takes from one record."""

    image: str  # path below one of the layout's image folders
    question: str
    answers: list[str]
    task: dict[str, str]  # what the metric or report needs beyond the answers (split, category, variant)


@dataclass(frozen=True)
class Layout:
    """Where a benchmark keeps its annotations and images, and how one record maps onto an item."""

    files: dict[str, str]  # annotation file -> tag passed to `parse` (ChartQA's split); one must exist
    records_key: str | None  # key of the record list in a top-level object; None: the file is the list
    id_field: str | None  # the dataset's own unique question id; None: ids from tag and position
    image_dirs: tuple[str, ...]  # below SRC, tried in order
    parse: Callable[[dict[str, Any], str], Fields]  # raises Malformed


def _text(record: dict[str, Any], key: str) -> str:
    value = record.get(key)
    if value is None:
        raise Malformed(f"field {key!r} missing")
    if not isinstance(value, str):
        raise Malformed(f"field {key!r} is {type(value).__name__}, expected a string")
    if not value.strip():
        raise Malformed(f"field {key!r} is empty")
    return value


def _answers(record: dict[str, Any], key: str) -> list[str]:
    """Gold answers verbatim (the metrics define their own normalisation); a bare string is a list of one."""
    value = record.get(key)
    if value is None:
        raise Malformed(f"no answers (field {key!r} missing)")
    answers = [value] if isinstance(value, str) else value
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        raise Malformed(f"field {key!r} is {type(value).__name__}, expected a string or a list of strings")
    if not any(a.strip() for a in answers):  # an empty gold would match anything under substring rules
        raise Malformed(f"no answers (field {key!r} is empty)")
    return answers


def _chartqa(record: dict[str, Any], split: str) -> Fields:
    # lmms-eval's split names: the runner reports relaxed_human_split / relaxed_augmented_split by `type`.
    return Fields(_text(record, "imgname"), _text(record, "query"), _answers(record, "label"),
                  {"type": f"{split}_test"})


def _ocrbench(record: dict[str, Any], _: str) -> Fields:
    # The metric needs both: `dataset` picks the HME100k formula rule, `category` the aggregation bucket.
    category = _text(record, "type")
    if category not in OCRBENCH_CATEGORIES:
        raise Malformed(f"unknown category {category!r} in field 'type'")
    return Fields(_text(record, "image_path"), _text(record, "question"), _answers(record, "answers"),
                  {"category": category, "dataset": _text(record, "dataset_name")})


def _textvqa(record: dict[str, Any], _: str) -> Fields:
    return Fields(f"{_text(record, 'image_id')}.jpg", _text(record, "question"), _answers(record, "answers"),
                  {"variant": "textvqa"})


def _docvqa(record: dict[str, Any], _: str) -> Fields:
    return Fields(_text(record, "image"), _text(record, "question"), _answers(record, "answers"), {})


LAYOUTS: dict[str, Layout] = {
    "chartqa": Layout({"test_human.json": "human", "test_augmented.json": "augmented"}, None, None, ("png",), _chartqa),
    # OCRBench's own `id` indexes its source dataset and repeats across datasets, so ids come from positions.
    "ocrbench": Layout({"OCRBench.json": ""}, None, None, ("OCRBench_Images", "."), _ocrbench),
    # train_val_images.zip unpacks to train_val_images/train_images/.
    "textvqa": Layout({"TextVQA_0.5.1_val.json": ""}, "data", "question_id",
                      ("train_images", "train_val_images/train_images"), _textvqa),
    "docvqa": Layout({"val_v1.0.json": ""}, "data", "questionId", (".",), _docvqa),
}


def _load_records(path: Path, key: str | None) -> list[Any]:
    """A broken annotation file is an error, not a skip: none of its records can be trusted."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
    if key is not None:
        data = data.get(key) if isinstance(data, dict) else None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected " + (f"an object with a {key!r} list" if key else "a list of records"))
    return data


def _position_id(fmt: str, tag: str, index: int) -> str:
    """For datasets without a unique question id: stable as long as the annotation file is."""
    return "-".join(part for part in (fmt, tag, f"{index:06d}") if part)


def _own_id(fmt: str, key: str, record: dict[str, Any]) -> str:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "":
        raise Malformed(f"field {key!r} missing or not an int/string")
    return f"{fmt}-{value}"


class _Images:
    """Finds, checks and places each source image once, however many questions share it."""

    def __init__(self, src: Path, dirs: tuple[str, ...], out: Path) -> None:
        self.src, self.dirs, self.out = src, dirs, out
        self.placed: dict[PurePosixPath, str | Malformed] = {}

    def place(self, image: str) -> str:
        """Path of the image relative to OUT; raises Malformed when it is missing or undecodable."""
        rel = PurePosixPath(image)
        if rel.is_absolute() or ".." in rel.parts:
            raise Malformed(f"image path {image!r} leaves the image folder")
        if rel not in self.placed:
            try:
                self.placed[rel] = self._place(rel)
            except Malformed as exc:
                self.placed[rel] = exc
        result = self.placed[rel]
        if isinstance(result, Malformed):
            raise result
        return result

    def _place(self, rel: PurePosixPath) -> str:
        found = next((self.src / d / rel for d in self.dirs if (self.src / d / rel).is_file()), None)
        if found is None:
            raise Malformed(f"image not found: {rel} (looked in {', '.join(d + '/' for d in self.dirs)} of {self.src})")
        try:
            with Image.open(found) as img:
                img.verify()
        except Exception as exc:  # Pillow raises many types for corrupt data (OSError, SyntaxError, struct.error)
            raise Malformed(f"cannot decode image {rel} ({type(exc).__name__}: {exc})") from None
        dest = self.out / "images" / rel
        if not (dest.exists() and os.path.samefile(found, dest)):
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.unlink(missing_ok=True)
            try:
                os.link(found, dest)
            except OSError:
                shutil.copy2(found, dest)
        return (PurePosixPath("images") / rel).as_posix()


def _convert(fmt: str, layout: Layout, src: str | Path, out: str | Path) -> dict[str, Any]:
    """Convert one benchmark layout; see `convert`."""
    src, out = Path(src), Path(out)
    files = [name for name in layout.files if (src / name).is_file()]
    if not files:
        expected = " and/or ".join(layout.files)
        raise FileNotFoundError(f"no {fmt} annotations in {src}: expected {expected}")
    images = _Images(src, layout.image_dirs, out)
    items: list[dict[str, Any]] = []
    skipped: list[str] = []
    seen: set[str] = set()
    for name in files:
        tag = layout.files[name]
        for index, record in enumerate(_load_records(src / name, layout.records_key)):
            # Until the record's own id is known, it is named by its place in the source file.
            label = _position_id(fmt, tag, index) if layout.id_field is None else f"{name}[{index}]"
            try:
                if not isinstance(record, dict):
                    raise Malformed(f"record is {type(record).__name__}, expected an object")
                if layout.id_field is not None:
                    label = _own_id(fmt, layout.id_field, record)
                if label in seen:
                    raise Malformed("duplicate id")
                seen.add(label)
                fields = layout.parse(record, tag)
                image = images.place(fields.image)
            except Malformed as exc:
                skipped.append(f"{label}: {exc}")
                continue
            items.append({"id": label, "image": image, "question": fields.question, "answers": fields.answers,
                          **fields.task})
    out.mkdir(parents=True, exist_ok=True)
    # Through a temporary file: an interrupted run never leaves a truncated items.jsonl behind.
    tmp = out / "items.jsonl.tmp"
    tmp.write_text("".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items), encoding="utf-8")
    os.replace(tmp, out / "items.jsonl")
    return {"format": fmt, "n": len(items), "skipped": len(skipped), "skipped_items": skipped,
            "out": str(out), "files": files}


READERS: dict[str, Callable[[str | Path, str | Path], dict[str, Any]]] = {
    fmt: partial(_convert, fmt, layout) for fmt, layout in LAYOUTS.items()
}


def convert(fmt: str, src: str | Path, out: str | Path) -> dict[str, Any]:
    """Convert the public layout of benchmark `fmt` in folder `src` into `out/items.jsonl` + `out/images/`.

    Returns a summary: format, n, skipped (count), skipped_items ("id: reason", the id being the
    source file and index when a record has none), out, and the annotation files read."""
    if fmt not in READERS:
        raise ValueError(f"unknown format {fmt!r}; valid formats: {', '.join(READERS)}")
    return READERS[fmt](src, out)
