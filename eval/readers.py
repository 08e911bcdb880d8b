"""Readers that turn public benchmark sources (ChartQA, OCRBench, TextVQA, DocVQA) into our eval format.

`convert(fmt, src, out)` writes `out/items.jsonl`, one `{"id", "image", "question", "answers", ...task
fields}` object a line, with each image under `out/images/`. Two kinds of source are read, and SRC may be
either; the first layout of the benchmark found in SRC is used:

- the benchmark's own release: its JSON annotation files and image folders, where its own scripts put
  them (OCRBench: `OCRBench/OCRBench.json` beside `OCRBench_Images/`, SRC being either folder holding the
  JSON or its parent). An image keeps its path below the benchmark's image folder; `images=DIR`
  overrides where images are looked up.
- a Hugging Face dataset snapshot, as lmms-eval loads it (lmms-lab/ChartQA, echo840/OCRBench,
  lmms-lab/textvqa, lmms-lab/DocVQA): parquet shards with each image embedded as a `{"bytes", "path"}`
  struct. Read offline with pyarrow; an image is written as `images/<sha256 prefix>.<format>`, so
  questions on one image share one file and equal basenames from different sources never collide.

A format only declares where its files are and which of its fields feed ours (a `Layout`); checking
records and images, reporting bad ones and writing are shared by all. A bad record or image is a counted
skip, listed with its reason in `out/skipped.jsonl`; a broken annotation file, a run that yields no item at
all, or one that skips more than `max_skipped` of the records (5 % by default), is an error.

Items keep the benchmark's own question ids where it has them (TextVQA, DocVQA; OCRBench's release: its
dataset name and id), so results join with other tools' by id; ChartQA and OCRBench's hub snapshot have
none, and their ids are split and position in the source (the order lmms-eval numbers its docs in).

Images are hard-linked, and copied with `shutil.copy2` only where the filesystem refuses a link
(another device, no link support). Not symlinked: a hard link costs no disk, yet OUT stays whole when
SRC is moved or deleted and archives as plain files. A symlinked source image (hub snapshots are made of
them) is resolved first, so OUT gets the real file rather than a link whose relative target dangles.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import IO, Any

from PIL import Image

from mmllm.jsonl import write_jsonl
from mmllm.progress import progress

from .metrics import OCRBENCH_CATEGORIES


SKIP_FILE = "skipped.jsonl"
MAX_SKIPPED = 0.05  # the fraction of a benchmark's records that may be skipped before a conversion fails


class Malformed(ValueError):
    """A record or its image that cannot become an item: reported with its id and skipped."""


@dataclass(frozen=True)
class Skip:
    """A record that became no item: its id (or source file[index] when it has none usable) and why."""

    id: str
    reason: str

    def __str__(self) -> str:
        return f"{self.id}: {self.reason}"


@dataclass(frozen=True)
class Conversion:
    """What `convert` wrote: `n` items from `files` (relative to SRC) into `out`, and the records skipped."""

    format: str
    n: int
    skipped: list[Skip]
    out: Path
    files: list[str]

    @property
    def skip_file(self) -> Path:
        return self.out / SKIP_FILE

    def reasons(self) -> Counter[str]:
        """Skips per kind of reason (the reason up to its first colon: `image not found`)."""
        return Counter(skip.reason.split(":", 1)[0] for skip in self.skipped)


@dataclass(frozen=True)
class Fields:
    """What a format's parser takes from one record."""

    image: str | bytes  # str: path below one of the layout's image folders; bytes: the embedded image file
    question: str
    answers: list[str]
    task: dict[str, str]  # what the metric or report needs beyond the answers (split, category, variant)


@dataclass(frozen=True)
class Layout:
    """Where a benchmark keeps its annotations and images, and how one record maps onto an item."""

    files: dict[str, str]  # annotation file name or glob -> tag passed to `parse` (a split); one must exist
    read: Callable[[Path], Iterable[Any]]  # the records of one annotation file, in order
    id_fields: tuple[str, ...]  # the fields that together are the dataset's own unique question id; (): positions
    image_dirs: tuple[str, ...]  # below the annotation folder, tried in order; (): images are embedded
    parse: Callable[[dict[str, Any], str], Fields]  # raises Malformed
    folders: tuple[str, ...] = (".",)  # the annotation folder: SRC or below it, the first holding a file


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


def _embedded(record: dict[str, Any], key: str) -> bytes:
    """The file bytes of a Hugging Face `Image` column; hub snapshots embed them, `path` is only a name."""
    value = record.get(key)
    data = value.get("bytes") if isinstance(value, dict) else None
    if not isinstance(data, bytes) or not data:
        raise Malformed(f"field {key!r} holds no embedded image bytes")
    return data


def _category(record: dict[str, Any], key: str) -> str:
    category = _text(record, key)
    if category not in OCRBENCH_CATEGORIES:
        raise Malformed(f"unknown category {category!r} in field {key!r}")
    return category


def _chartqa(record: dict[str, Any], split: str) -> Fields:
    # lmms-eval's split names: the runner reports relaxed_human_split / relaxed_augmented_split by `type`.
    return Fields(_text(record, "imgname"), _text(record, "query"), _answers(record, "label"),
                  {"type": f"{split}_test"})


def _chartqa_hf(record: dict[str, Any], _: str) -> Fields:
    split = _text(record, "type")
    if split not in ("human_test", "augmented_test"):
        raise Malformed(f"unknown split {split!r} in field 'type'")
    return Fields(_embedded(record, "image"), _text(record, "question"), _answers(record, "answer"),
                  {"type": split})


def _ocrbench(record: dict[str, Any], _: str) -> Fields:
    # The metric needs both: `dataset` picks the HME100k formula rule, `category` the aggregation bucket.
    return Fields(_text(record, "image_path"), _text(record, "question"), _answers(record, "answers"),
                  {"category": _category(record, "type"), "dataset": _text(record, "dataset_name")})


def _ocrbench_hf(record: dict[str, Any], _: str) -> Fields:
    return Fields(_embedded(record, "image"), _text(record, "question"), _answers(record, "answer"),
                  {"category": _category(record, "question_type"), "dataset": _text(record, "dataset")})


def _textvqa(record: dict[str, Any], _: str) -> Fields:
    return Fields(f"{_text(record, 'image_id')}.jpg", _text(record, "question"), _answers(record, "answers"),
                  {"variant": "textvqa"})


def _textvqa_hf(record: dict[str, Any], _: str) -> Fields:
    return Fields(_embedded(record, "image"), _text(record, "question"), _answers(record, "answers"),
                  {"variant": "textvqa"})


def _docvqa(record: dict[str, Any], _: str) -> Fields:
    return Fields(_text(record, "image"), _text(record, "question"), _answers(record, "answers"), {})


def _docvqa_hf(record: dict[str, Any], _: str) -> Fields:
    return Fields(_embedded(record, "image"), _text(record, "question"), _answers(record, "answers"), {})


def _json_records(path: Path, key: str | None = None) -> list[Any]:
    """A broken annotation file is an error, not a skip: none of its records can be trusted.

    `key`: the record list sits under this key of a top-level object; None: the file is the list.
    A leading UTF-8 byte-order mark (Windows editors write one) is not part of the JSON."""
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: invalid UTF-8 (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
    if key is not None:
        data = data.get(key) if isinstance(data, dict) else None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected " + (f"an object with a {key!r} list" if key else "a list of records"))
    return data


def _parquet_records(path: Path) -> Iterator[dict[str, Any]]:
    """Rows a batch at a time: a DocVQA shard holds hundreds of MB of images."""
    import pyarrow as pa  # only parquet sources need it
    import pyarrow.parquet as pq

    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=64):
            yield from batch.to_pylist()
    except pa.ArrowException as exc:
        raise ValueError(f"{path}: unreadable parquet ({exc})") from None


_DATA = partial(_json_records, key="data")
# Hugging Face snapshots keep a split's shards as `<split>-NNNNN-of-NNNNN.parquet` in a folder named
# after the config: data/ for most, DocVQA/ beside InfographicVQA/ in lmms-lab/DocVQA. SRC may be the
# snapshot or that folder.
LAYOUTS: dict[str, tuple[Layout, ...]] = {
    # ChartQA has no question id in either source: ids are split and position (`chartqa-human-000012`).
    "chartqa": (
        Layout({"test_human.json": "human", "test_augmented.json": "augmented"}, _json_records, (), ("png",),
               _chartqa),
        Layout({"test-*.parquet": "test"}, _parquet_records, (), (), _chartqa_hf, (".", "data")),
    ),
    # OCRBench's own `id` indexes its source dataset and repeats across datasets: with the dataset's name it is
    # unique (`ocrbench-IIIT5K-211`). The hub snapshot holds no id: its row positions are what lmms-eval's doc ids
    # count. Its repository keeps OCRBench/OCRBench.json beside OCRBench_Images/; a flat copy has the images inside.
    "ocrbench": (
        Layout({"OCRBench.json": ""}, _json_records, ("dataset_name", "id"),
               ("OCRBench_Images", ".", "../OCRBench_Images"), _ocrbench, (".", "OCRBench")),
        Layout({"test-*.parquet": "test"}, _parquet_records, (), (), _ocrbench_hf, (".", "data")),
    ),
    # train_val_images.zip unpacks to train_val_images/train_images/.
    "textvqa": (
        Layout({"TextVQA_0.5.1_val.json": ""}, _DATA, ("question_id",), ("train_images", "train_val_images/train_images"),
               _textvqa),
        Layout({"validation-*.parquet": "validation"}, _parquet_records, ("question_id",), (), _textvqa_hf,
               (".", "data")),
    ),
    "docvqa": (
        Layout({"val_v1.0.json": ""}, _DATA, ("questionId",), (".",), _docvqa),
        Layout({"validation-*.parquet": "validation"}, _parquet_records, ("questionId",), (), _docvqa_hf,
               (".", "DocVQA")),
    ),
}


def _position_id(fmt: str, tag: str, index: int) -> str:
    """For datasets without a unique question id: stable as long as the annotation file is."""
    return "-".join(part for part in (fmt, tag, f"{index:06d}") if part)


def _own_id(fmt: str, keys: tuple[str, ...], record: dict[str, Any]) -> str:
    """`fmt-value` (`fmt-value1-value2` for an id of several fields), so results join with other tools' by id."""
    values = [record.get(key) for key in keys]
    for key, value in zip(keys, values):
        if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "":
            raise Malformed(f"field {key!r} missing or not an int/string")
    return "-".join([fmt, *map(str, values)])


def _annotations(layout: Layout, src: Path) -> tuple[Path, list[tuple[Path, str]]] | None:
    """The annotation folder and its files with their tags, in declaration order; None if absent."""
    for folder in (src / name for name in layout.folders):
        files = [(path, tag) for pattern, tag in layout.files.items()
                 for path in sorted(folder.glob(pattern)) if path.is_file()]
        if files:
            return folder, files
    return None


def _expected(layout: Layout) -> str:
    where = f" (in SRC or {', '.join(d + '/' for d in layout.folders[1:])})" if len(layout.folders) > 1 else ""
    return " and/or ".join(layout.files) + where


class _Embedded(io.BytesIO):
    """Image bytes from a parquet row, named so that Pillow's errors read the same on every run."""

    def __repr__(self) -> str:
        return "<embedded image>"


def _verify(image: Path | IO[bytes], what: str) -> str:
    """The image's format; raises Malformed when Pillow cannot read it."""
    try:
        with Image.open(image) as img:
            img.verify()
            return str(img.format)
    except Exception as exc:  # Pillow raises many types for corrupt data (OSError, SyntaxError, struct.error)
        raise Malformed(f"cannot decode {what} ({type(exc).__name__}: {exc})") from None


class _Images:
    """Finds, checks and places each source image once, however many questions share it."""

    def __init__(self, dirs: tuple[Path, ...], out: Path) -> None:
        self.dirs, self.out = dirs, out
        self.placed: dict[PurePosixPath | str, str | Malformed] = {}

    def place(self, image: str | bytes) -> str:
        """Path of the image relative to OUT; raises Malformed when it is missing or undecodable."""
        if isinstance(image, bytes):
            key: PurePosixPath | str = hashlib.sha256(image).hexdigest()  # keyed by the bytes, all would stay in memory
        else:
            key = PurePosixPath(image)
            if key.is_absolute() or ".." in key.parts:
                raise Malformed(f"image path {image!r} leaves the image folder")
        if key not in self.placed:
            try:
                self.placed[key] = self._write(image, key) if isinstance(image, bytes) else self._link(key)
            except Malformed as exc:
                self.placed[key] = exc
        result = self.placed[key]
        if isinstance(result, Malformed):
            raise result
        return result

    def _dest(self, rel: PurePosixPath) -> Path:
        """A free slot under OUT/images: whatever an earlier run left there may be a link into SRC."""
        dest = self.out / "images" / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.unlink(missing_ok=True)
        return dest

    def _link(self, rel: PurePosixPath) -> str:
        found = next((d / rel for d in self.dirs if (d / rel).is_file()), None)
        if found is None:
            raise Malformed(f"image not found: {rel} (looked in {', '.join(str(d) for d in self.dirs)})")
        found = found.resolve()  # os.link would link the symlink itself, and its relative target dangles in OUT
        _verify(found, f"image {rel}")
        dest = self.out / "images" / rel
        if not (dest.exists() and os.path.samefile(found, dest)):
            dest = self._dest(rel)
            try:
                os.link(found, dest)
            except OSError:
                shutil.copy2(found, dest)
        return f"images/{rel}"

    def _write(self, data: bytes, digest: str) -> str:
        rel = PurePosixPath(f"{digest[:16]}.{_verify(_Embedded(data), 'embedded image').lower()}")
        self._dest(rel).write_bytes(data)
        return f"images/{rel}"


def _convert(fmt: str, layouts: tuple[Layout, ...], src: str | Path, out: str | Path,
             images: str | Path | None = None, max_skipped: float = MAX_SKIPPED) -> Conversion:
    """Convert the first of a benchmark's layouts found in SRC; see `convert`."""
    src, out = Path(src), Path(out)
    for layout in layouts:
        if (found := _annotations(layout, src)) is not None:
            break
    else:
        raise FileNotFoundError(f"no {fmt} annotations in {src}: expected {', or '.join(map(_expected, layouts))}")
    folder, files = found
    names = [path.relative_to(src).as_posix() for path, _ in files]
    placer = _Images(_image_dirs(fmt, layout, folder, src, images), out)
    items, skipped = _read_records(fmt, layout, files, names, placer)
    result = Conversion(fmt, len(items), skipped, out, names)
    if skipped:  # also when the conversion fails below: the list says why
        out.mkdir(parents=True, exist_ok=True)
        write_jsonl(result.skip_file, [asdict(skip) for skip in skipped])
    if not items:  # an empty items.jsonl would only fail later, far from the cause
        raise ValueError(f"wrote no items: {len(skipped)} skipped"
                         + (f"; first: {skipped[0]} (all in {result.skip_file})" if skipped
                            else f" (no records in {folder})"))
    total = len(items) + len(skipped)
    if len(skipped) > max_skipped * total:
        raise ValueError(f"{len(skipped)} of {total} records skipped ({len(skipped) / total:.1%}), over max_skipped "
                         f"{max_skipped:.1%}; items.jsonl not written; first: {skipped[0]} "
                         f"(all in {result.skip_file}; --max_skipped 1 keeps the rest)")
    if not skipped:
        result.skip_file.unlink(missing_ok=True)  # an earlier run's list would describe another conversion
    write_jsonl(out / "items.jsonl", items)
    return result


def _image_dirs(fmt: str, layout: Layout, folder: Path, src: Path, images: str | Path | None) -> tuple[Path, ...]:
    """Where the layout's images are looked for: beside its annotations, or the folder the user named."""
    if images is None:
        return tuple(Path(os.path.normpath(folder / d)) for d in layout.image_dirs)
    if not layout.image_dirs:
        raise ValueError(f"the {fmt} source in {src} embeds its images: an image folder does not apply")
    if not Path(images).is_dir():
        raise FileNotFoundError(f"image folder not found: {images}")
    return (Path(images),)


def _read_records(fmt: str, layout: Layout, files: list, names: list[str],
                  placer: _Images) -> tuple[list[dict[str, Any]], list[Skip]]:
    """Every record of the annotation files as an item, or as a `Skip` that names it and says what is wrong."""
    items: list[dict[str, Any]] = []
    skipped: list[Skip] = []
    seen: set[str] = set()
    positions: Counter[str] = Counter()  # per tag, across the shards of one split
    for (path, tag), name in zip(files, names):
        for index, record in enumerate(progress(layout.read(path), f"convert {name}", "record")):
            # Until the record's own id is known, it is named by its place in the source file.
            label = f"{name}[{index}]" if layout.id_fields else _position_id(fmt, tag, positions[tag])
            positions[tag] += 1
            try:
                if not isinstance(record, dict):
                    raise Malformed(f"record is {type(record).__name__}, expected an object")
                if layout.id_fields:
                    label = _own_id(fmt, layout.id_fields, record)
                if label in seen:
                    raise Malformed("duplicate id")
                seen.add(label)
                fields = layout.parse(record, tag)
                image = placer.place(fields.image)
            except Malformed as exc:
                skipped.append(Skip(label, str(exc)))
                continue
            items.append({"id": label, "image": image, "question": fields.question, "answers": fields.answers,
                          **fields.task})
    return items, skipped


READERS: dict[str, Callable[..., Conversion]] = {
    fmt: partial(_convert, fmt, layouts) for fmt, layouts in LAYOUTS.items()
}


def convert(fmt: str, src: str | Path, out: str | Path, images: str | Path | None = None,
            max_skipped: float = MAX_SKIPPED) -> Conversion:
    """Convert benchmark `fmt` from folder `src` (its own release or a Hugging Face parquet snapshot) into
    `out/items.jsonl` + `out/images/`; `images` overrides where a release's images are looked up.

    The records skipped (an id that is the source file and index when a record's own id is bad) are listed
    in `out/skipped.jsonl`. Raises ValueError when no record becomes an item, or when more than `max_skipped`
    (a fraction) of the records are skipped: a benchmark missing most of its images would score a few
    items as if they were the benchmark."""
    if fmt not in READERS:
        raise ValueError(f"unknown format {fmt!r}; valid formats: {', '.join(READERS)}")
    if not 0 <= max_skipped <= 1:
        raise ValueError(f"max_skipped must be a fraction in [0, 1], got {max_skipped}")
    return READERS[fmt](src, out, images, max_skipped)
