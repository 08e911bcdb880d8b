"""Self-contained training shards: parquet files holding each record's JSON and its image bytes, plus an
index (`index.npz`) with the row counts, each record's length features and the records left out.

A shard folder can be copied to a cluster and read there with nothing else; training reads it row group by
row group, memory-mapped, so neither a table nor its images are ever all in RAM. Records that cannot be
used are found at shard time (malformed lines, missing or unreadable images, audio) and reported with
file:line; they are kept in the index so a run counts them as it counts malformed lines of a JSONL.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mmllm.jsonl import BadInput, Record, is_json_array, parse_line, place, replace_atomically, scan_records
from mmllm.processor import Processor
from mmllm.progress import progress
from mmllm.sample import SampleError

from .lengths import FeatureBuilder, LengthFeatures
from .media import UNKNOWN_SIZE, image_size, open_image, paths_of

SHARD_INDEX = "index.npz"
# Rows per row group, the unit a reader decodes to reach one row: small, so a random read (a shuffled or
# length-grouped epoch) decodes little beyond the row it needs.
GROUP_ROWS = 32
SCHEMA = pa.schema([("id", pa.string()), ("origin", pa.string()), ("json", pa.string()),
                    ("images", pa.list_(pa.binary()))])


@dataclass(frozen=True)
class ShardRecord(Record):
    """A record read from a shard: `line` is its row in the shard file (from 0, as pyarrow counts); its id
    and origin (source file:line) are what they were in the source, so samples keep their ids."""

    sample_id: str = ""
    origin: str = ""

    @property
    def id(self) -> str:
        return self.sample_id

    def where(self) -> str:
        return f"{self.file} row {self.line} (id {self.id}) from {self.origin}"


@dataclass
class ShardSummary:
    n: int = 0
    shards: list[str] = field(default_factory=list)
    bad: list[BadInput] = field(default_factory=list)


def is_shard_folder(path: str | Path) -> bool:
    return (Path(path) / SHARD_INDEX).is_file()


def write_shards(src: str | Path, out: str | Path, image_folder: str | None = None, rows: int = 10_000,
                 group_rows: int = GROUP_ROWS) -> ShardSummary:
    """Shard a JSONL file or JSON array into `out` (new or empty): `rows` records a shard. The index is
    written last, so a folder whose sharding was cut short is no dataset. Nothing written is a ValueError."""
    out = Path(out)
    if rows < 1 or group_rows < 1:
        raise ValueError(f"rows and group_rows must be at least 1, got {rows} and {group_rows}")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; shard into a new folder")
    out.mkdir(parents=True, exist_ok=True)
    in_array, summary, features, counts = is_json_array(src), ShardSummary(), FeatureBuilder(), []
    writer, group = None, []
    for found in progress(scan_records(src, ("conversations",)), f"shard {Path(src).name}", "record"):
        if isinstance(found, BadInput):
            summary.bad.append(found)
            continue
        record = Record(str(Path(src)), found.line, found.data, in_array)
        try:
            row, sizes = embed(record, image_folder)
        except SampleError as exc:
            summary.bad.append(BadInput(record.where(), str(exc)))
            continue
        if not counts or counts[-1] == rows:
            writer = _flush(writer, group)
            summary.shards.append(f"shard-{len(counts):05d}.parquet")
            writer, counts = pq.ParquetWriter(out / summary.shards[-1], SCHEMA), counts + [0]
        group.append(row)
        features.add(record.data, sizes)
        counts[-1] += 1
        summary.n += 1
        if len(group) == group_rows:
            writer = _flush(writer, group, keep_open=True)
    _flush(writer, group)
    if not summary.n:
        first = f"; first: {summary.bad[0]}" if summary.bad else ""
        raise ValueError(f"no record of {src} could be sharded: {len(summary.bad)} bad{first}")
    _save_index(out, summary, counts, group_rows, features.build(), str(src))
    return summary


def embed(record: Record, image_folder: str | None) -> tuple[dict, list[tuple[int, int]]]:
    """A record's shard row (its JSON and image bytes) and its image sizes, or a SampleError saying why it
    cannot be sharded. The header must tell the size; a fault past it is found when the image is decoded."""
    if record.data.get("audio") is not None:
        raise SampleError("audio is not embedded in shards (images only); keep audio sets as JSONL")
    blobs, sizes = [], []
    for path in paths_of(record, "image", image_folder):
        try:
            blobs.append(Path(path).read_bytes())
        except FileNotFoundError:
            raise SampleError(f"image not found: {path}") from None
        except OSError as exc:
            raise SampleError(f"cannot read image {path}: {exc}") from None
        sizes.append(image_size(io.BytesIO(blobs[-1])))
        if sizes[-1] == UNKNOWN_SIZE:
            raise SampleError(f"cannot decode image {path}: not an image Pillow can identify")
    row = {"id": record.id, "origin": place(record.file, record.line, record.in_array),
           "json": json.dumps(record.data, ensure_ascii=False), "images": blobs}
    return row, sizes


def _flush(writer: pq.ParquetWriter | None, group: list[dict], keep_open: bool = False) -> pq.ParquetWriter | None:
    """Write the buffered rows as one row group (rows of one group are never split across shards)."""
    if group:
        writer.write_table(pa.Table.from_pylist(group, SCHEMA))
        group.clear()
    if writer is not None and not keep_open:
        writer.close()
        return None
    return writer


def _save_index(out: Path, summary: ShardSummary, counts: list[int], group_rows: int, features: LengthFeatures,
                source: str) -> None:
    replace_atomically(out / SHARD_INDEX, lambda fh: np.savez(
        fh, shards=np.array(summary.shards), rows=np.array(counts, dtype=np.int64), group_rows=group_rows,
        source=source, chars=features.chars, image_counts=features.image_counts, image_sizes=features.image_sizes,
        bad_where=np.array([b.where for b in summary.bad], dtype=str),
        bad_reason=np.array([b.reason for b in summary.bad], dtype=str)))


def is_shard_file(path: str | Path) -> bool:
    """A parquet file (by its magic bytes): as training data it can only be one shard of a shard folder."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == b"PAR1"
    except OSError:
        return False


class ShardReader:
    """A shard folder as records, row group by row group: each parquet file is memory-mapped and only the row
    group holding the asked-for row is decoded (the last one is kept, so reading in order decodes each once).
    Pickles to DataLoader workers as its index arrays; open files are not carried over.

    One shard file of a folder reads as that shard alone, through the folder's index; the records left out at
    shard time are not counted then (the index does not say which shard they would have been in)."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        one = path.name if path.is_file() else None  # one shard of the folder, or all of them
        folder = path.parent if one else path
        if not is_shard_folder(folder):
            raise FileNotFoundError(f"{path} is a parquet file without the {SHARD_INDEX} of `mmllm data shard` "
                                    "beside it; shard the training set with `mmllm data shard`")
        with np.load(folder / SHARD_INDEX, allow_pickle=False) as index:
            names = index["shards"].tolist()
            if one and one not in names:
                raise FileNotFoundError(f"{path} is not one of the shards that {folder / SHARD_INDEX} lists")
            first, last = (names.index(one), names.index(one) + 1) if one else (0, len(names))
            records = np.concatenate([[0], np.cumsum(index["rows"])])
            images = np.concatenate([[0], np.cumsum(index["image_counts"])])
            a, b = records[first], records[last]
            self.files = [str(folder / name) for name in names[first:last]]
            self.starts = records[first:last + 1] - a
            self.group_rows = int(index["group_rows"])
            self.features = LengthFeatures(index["chars"][a:b], index["image_counts"][a:b],
                                           index["image_sizes"][images[a]:images[b]])
            self.bad_lines = [] if one else [
                BadInput(w, r) for w, r in zip(index["bad_where"].tolist(), index["bad_reason"].tolist())]
        self._files: dict[int, pq.ParquetFile] = {}
        self._group: tuple[tuple[int, int], pa.Table] | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_files": {}, "_group": None}

    def __len__(self) -> int:
        return int(self.starts[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """(shard, row within it) of a record."""
        shard = int(np.searchsorted(self.starts, index, side="right")) - 1
        return shard, index - int(self.starts[shard])

    def row(self, index: int) -> dict:
        """One row as a dict; a shard that cannot be read (cut short, a damaged row group) is a SampleError
        naming the file, row and row group, so its rows are counted bad samples like any other."""
        shard, row = self.locate(index)
        group, at = divmod(row, self.group_rows)
        if self._group is None or self._group[0] != (shard, group):
            try:
                if shard not in self._files:
                    self._files[shard] = pq.ParquetFile(self.files[shard], memory_map=True)
                self._group = ((shard, group), self._files[shard].read_row_group(group))
            except (pa.ArrowException, OSError) as exc:
                raise SampleError(f"{self.files[shard]} row {row} (row group {group}): cannot read the shard "
                                  f"({type(exc).__name__}: {exc})") from None
        return self._group[1].slice(at, 1).to_pylist()[0]

    def __getitem__(self, index: int) -> ShardRecord:
        (shard, at), row = self.locate(index), self.row(index)
        try:
            data = parse_line(row["json"].encode())
        except (ValueError, AttributeError) as exc:  # a damaged page that still decoded: not the JSON written
            raise SampleError(f"{self.files[shard]} row {at}: damaged record JSON ({exc})") from None
        return ShardRecord(self.files[shard], at, data, sample_id=row["id"], origin=row["origin"])

    def media(self, index: int, record: Record, processor: Processor) -> tuple[list, list]:
        """The record's embedded images, decoded (named by their path in the source); shards hold no audio."""
        names = paths_of(record, "image", "")
        blobs = self.row(index)["images"]
        return [open_image(blob, name, processor) for blob, name in zip(blobs, names)], []
