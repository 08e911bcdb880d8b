"""Reading and writing the project's JSON Lines files (and reading JSON arrays of records).

Reading never lets one line stop a run: a line that is not UTF-8, not JSON, nested too deep, holding an
integer too long to parse, or not an object comes back as a `BadInput` naming file and line. A UTF-8
byte-order mark at the start of the file is read as the mark it is. `read_records` also reads a file
holding one JSON array of records (LLaVA ships its training sets so); there a bad element is a
`BadInput` naming file and item, and an array that is not JSON as a whole is one error naming the file.

Writing is atomic: the text goes to a temporary file beside the target and is renamed over it, so a
crash leaves the old file or the new one, never half of either.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

BOM = b"\xef\xbb\xbf"


def place(file: str, line: int, in_array: bool = False) -> str:
    """`file:line`, or `file item n` for the n-th (from 1) element of a JSON array."""
    return f"{file} item {line}" if in_array else f"{file}:{line}"


@dataclass(frozen=True)
class Record:
    """One parsed line, or array element (`line` then counts elements from 1): the data and where it came from."""

    file: str
    line: int
    data: dict[str, Any]
    in_array: bool = False

    @property
    def id(self) -> str:
        return str(self.data.get("id", place(Path(self.file).name, self.line, self.in_array)))

    def where(self) -> str:
        return f"{place(self.file, self.line, self.in_array)} (id {self.id})"


@dataclass(frozen=True)
class BadInput:
    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


def _at(line: int, column: int) -> str:
    """A position: the column alone within one line, line and column within a whole document."""
    return f"column {column}" if line == 1 else f"line {line} column {column}"


def parse_line(raw: bytes) -> Any:
    """One line's (or one whole document's) JSON value; raises ValueError with a reason a user can act on."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        at = _at(raw.count(b"\n", 0, exc.start) + 1, exc.start - raw.rfind(b"\n", 0, exc.start))
        raise ValueError(f"invalid UTF-8 (byte 0x{raw[exc.start]:02x} at {at})") from None
    try:
        return json.loads(text.rstrip())  # leading whitespace stays, so positions count from the line's start
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON ({exc.msg} at {_at(exc.lineno, exc.colno)})") from None
    except RecursionError:
        raise ValueError("invalid JSON (nested too deeply)") from None
    except ValueError as exc:  # e.g. an integer longer than Python's digit limit
        raise ValueError(f"invalid JSON ({exc})") from None


def read_jsonl(path: str | Path, required: Sequence[str]) -> tuple[list[Record], list[BadInput]]:
    """Every object line with the `required` fields as a Record; every other non-blank line as a BadInput."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    records, bad = [], []
    with path.open("rb") as fh:
        for line_no, raw in enumerate(fh, 1):
            if line_no == 1 and raw.startswith(BOM):
                raw = raw[len(BOM):]
            if not raw.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                data = parse_line(raw)
            except ValueError as exc:
                bad.append(BadInput(where, str(exc)))
                continue
            problem = record_problem(data, required)
            if problem:
                bad.append(BadInput(where, problem))
                continue
            records.append(Record(str(path), line_no, data))
    return records, bad


def record_problem(data: Any, required: Sequence[str]) -> str | None:
    """Why a parsed value is not a record (not an object, or missing a required field); None when it is one."""
    if not isinstance(data, dict):
        return f"expected a JSON object, got {type(data).__name__}"
    missing = [k for k in required if k not in data]
    return f"missing field(s) {missing}" if missing else None


def read_records(path: str | Path, required: Sequence[str]) -> tuple[list[Record], list[BadInput]]:
    """Records of a JSONL file, or of a JSON array when the first non-blank byte is `[`.

    An array is parsed whole (as LLaVA's loader does), so one that is not valid JSON is a ValueError
    naming the file; its elements are then checked one by one like lines."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    if _first_byte(path) != b"[":
        return read_jsonl(path, required)
    raw = path.read_bytes()
    raw = raw[len(BOM):] if raw.startswith(BOM) else raw
    try:
        rows = parse_line(raw)
    except ValueError as exc:
        raise ValueError(f"{path} starts with '[' but is not a valid JSON array: {exc}") from None
    records, bad = [], []
    for n, data in enumerate(rows, 1):
        problem = record_problem(data, required)
        if problem:
            bad.append(BadInput(place(str(path), n, in_array=True), problem))
        else:
            records.append(Record(str(path), n, data, in_array=True))
    return records, bad


def _first_byte(path: Path) -> bytes:
    """The first byte after the byte-order mark and any whitespace (b"" for a blank file), read in chunks."""
    with path.open("rb") as fh:
        head = fh.read(len(BOM))
        head = b"" if head == BOM else head
        while not head.strip():
            head = fh.read(1 << 16)
            if not head:
                return b""
        return head.lstrip()[:1]


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write beside the target, flush to disk, then rename over it (same filesystem, so the rename is atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def dumps_line(row: Any) -> str:
    return json.dumps(row, ensure_ascii=False) + "\n"


def write_jsonl(path: str | Path, rows: Iterable[Any]) -> None:
    """All rows, one JSON value a line, atomically."""
    write_text_atomic(path, "".join(map(dumps_line, rows)))


def write_json(path: str | Path, value: Any) -> None:
    """One indented JSON document, atomically."""
    write_text_atomic(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")
