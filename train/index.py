"""Training records by index, without the records in RAM.

A JSONL file or JSON array is scanned once: every record is parsed and checked (bad ones reported with
file:line, or file item n, as `mmllm.jsonl` reads them) but only its byte range in the file and its length
features are kept, in numpy arrays; asking for a record reads and parses its bytes again. A shard folder
(`mmllm data shard`) is read through its own index. A process holds a few dozen bytes a record instead of
its parsed dict, and DataLoader workers get a few arrays, not millions of objects, when the dataset is
pickled (or forked: numpy buffers hold no reference counts, so their pages stay shared).
"""
from __future__ import annotations

from array import array
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mmllm.jsonl import BadInput, Record, is_json_array, parse_line, place, scan_records
from mmllm.processor import Processor
from mmllm.sample import SampleError

from .lengths import FeatureBuilder, LengthFeatures, image_count
from .media import UNKNOWN_SIZE, image_size, load_media, paths_of
from .shards import SHARD_INDEX, ShardReader, is_shard_file, is_shard_folder


class FileIndex:
    """One JSONL file or JSON array: its good records' line (or item) numbers and byte ranges.

    `measure_images` reads every image's header at scan time (one small read a file), so the length
    estimate knows each image's tile grid; otherwise sizes are unknown and estimated at the most tiles."""

    def __init__(self, path: str | Path, image_folder: str | None = None, measure_images: bool = False) -> None:
        self.path, self.image_folder, self.in_array = str(Path(path)), image_folder, is_json_array(path)
        lines, starts, ends, features = array("q"), array("q"), array("q"), FeatureBuilder()
        self.bad_lines: list[BadInput] = []
        for found in scan_records(path, ("conversations",)):
            if isinstance(found, BadInput):
                self.bad_lines.append(found)
                continue
            lines.append(found.line)
            starts.append(found.start)
            ends.append(found.end)
            features.add(found.data, self.image_sizes(found.data, found.line) if measure_images
                         else [UNKNOWN_SIZE] * image_count(found.data))
        self.lines, self.starts, self.ends = (np.frombuffer(a, dtype=np.int64) for a in (lines, starts, ends))
        self.features = features.build()

    def image_sizes(self, data: dict, line: int) -> list[tuple[int, int]]:
        try:
            paths = paths_of(Record(self.path, line, data, self.in_array), "image", self.image_folder)
        except SampleError:  # a malformed field: loading the sample reports it
            return []
        return [image_size(p) for p in paths]

    def __len__(self) -> int:
        return len(self.lines)

    def __getitem__(self, index: int) -> Record:
        """The record parsed from its bytes; a SampleError if the file changed since it was indexed."""
        line = int(self.lines[index])
        with open(self.path, "rb") as fh:
            fh.seek(int(self.starts[index]))
            raw = fh.read(int(self.ends[index] - self.starts[index]))
        try:
            return Record(self.path, line, parse_line(raw), self.in_array)
        except ValueError as exc:
            where = place(self.path, line, self.in_array)
            raise SampleError(f"{where}: changed since it was indexed ({exc})") from None

    def media(self, index: int, record: Record, processor: Processor) -> tuple[list, list]:
        return load_media(processor, record, self.image_folder)


Source = FileIndex | ShardReader


def open_source(path: str | Path, image_folder: str | None = None, measure_images: bool = False) -> Source:
    """A shard folder (it holds an index file) or one shard file of one, or a JSONL / JSON-array file."""
    if is_shard_folder(path) or is_shard_file(path):
        return ShardReader(path)
    if Path(path).is_dir():
        raise FileNotFoundError(f"{path} is a folder without a shard index ({SHARD_INDEX}); "
                                "write one with `mmllm data shard`, or pass a JSONL or JSON file")
    return FileIndex(path, image_folder, measure_images)


class Catalog(Sequence):
    """Several sources (files, shard folders) as one sequence of records, numbered in order."""

    def __init__(self, sources: Sequence[Source]) -> None:
        self.sources = list(sources)
        self.starts = np.cumsum([0, *map(len, self.sources)])
        self.bad_lines = [bad for source in self.sources for bad in source.bad_lines]

    def __len__(self) -> int:
        return int(self.starts[-1])

    def locate(self, index: int) -> tuple[Source, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"record {index} of {len(self)}")
        k = int(np.searchsorted(self.starts, index, side="right")) - 1
        return self.sources[k], index - int(self.starts[k])

    def __getitem__(self, index: int) -> Record:
        source, at = self.locate(index)
        return source[at]

    def media(self, index: int, record: Record, processor: Processor) -> tuple[list, list]:
        """The record's images and audio, decoded: from files, or embedded in its shard."""
        source, at = self.locate(index)
        return source.media(at, record, processor)

    @property
    def features(self) -> LengthFeatures:
        return LengthFeatures.concatenate([source.features for source in self.sources])
