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
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator, NamedTuple, Sequence

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
    return _collect(path, scan_jsonl(path, required))


class Located(NamedTuple):
    """One good record as a scan finds it: its line (or item) number, its bytes [start, end) in the file
    (what an index keeps to parse it again later) and its data."""

    line: int
    start: int
    end: int
    data: dict[str, Any]


def scan_jsonl(path: str | Path, required: Sequence[str]) -> Iterator[Located | BadInput]:
    """Each non-blank line of a JSONL file, in order: a Located record or a BadInput naming file:line."""
    path = _data_file(path)
    with path.open("rb") as fh:
        offset = 0
        for line_no, raw in enumerate(fh, 1):
            start, offset = offset, offset + len(raw)
            if line_no == 1 and raw.startswith(BOM):
                raw, start = raw[len(BOM):], start + len(BOM)
            if not raw.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                data = parse_line(raw)
            except ValueError as exc:
                yield BadInput(where, str(exc))
                continue
            problem = record_problem(data, required)
            yield BadInput(where, problem) if problem else Located(line_no, start, offset, data)


def record_problem(data: Any, required: Sequence[str]) -> str | None:
    """Why a parsed value is not a record (not an object, or missing a required field); None when it is one."""
    if not isinstance(data, dict):
        return f"expected a JSON object, got {type(data).__name__}"
    missing = [k for k in required if k not in data]
    return f"missing field(s) {missing}" if missing else None


def read_records(path: str | Path, required: Sequence[str]) -> tuple[list[Record], list[BadInput]]:
    """Records of a JSONL file, or of a JSON array when the file holds one (`is_json_array`).

    An array that is not valid JSON as a whole is a ValueError naming the file; its elements are
    checked one by one like lines."""
    return _collect(path, scan_records(path, required), in_array=is_json_array(path))


def is_json_array(path: str | Path) -> bool:
    """Whether the file holds one JSON array: its first non-blank byte is `[`, and its first non-blank line
    is not a whole JSON value with more lines after it (that is a JSONL whose first record is a list)."""
    path = _data_file(path)
    if _first_byte(path) != b"[":
        return False
    with path.open("rb") as fh:
        lines = (raw for raw in fh if raw.strip() and raw.strip() != BOM)
        first, more = next(lines), next(lines, None) is not None
    if not more:  # the whole file is one line: an array however long
        return True
    try:
        parse_line(first.removeprefix(BOM))
    except ValueError:  # the start of a pretty-printed array (or a broken line: the array's error names it)
        return True
    return False


def scan_records(path: str | Path, required: Sequence[str]) -> Iterator[Located | BadInput]:
    """`scan_jsonl` or `scan_json_array`, as `is_json_array` says."""
    return (scan_json_array if is_json_array(path) else scan_jsonl)(path, required)


JSON_WHITESPACE = re.compile(r"[ \t\n\r]*")


def scan_json_array(path: str | Path, required: Sequence[str]) -> Iterator[Located | BadInput]:
    """Each element of a file holding one JSON array: a Located record with its byte range in the file, or
    a BadInput naming file and item (from 1). Elements are decoded one at a time (`raw_decode`), so only
    one is held at once, not the whole parsed array (LLaVA's 665k-record .json is over a gigabyte).

    An array that is not JSON as a whole is a ValueError naming the file, with the position `json.loads`
    gives for the whole document."""
    path = _data_file(path)
    raw = path.read_bytes()
    skip = len(BOM) if raw.startswith(BOM) else 0
    try:
        text = raw[skip:].decode("utf-8")
        ascii_only, decoder = text.isascii(), json.JSONDecoder()
        char, byte = 0, skip  # a char offset and its byte offset, advanced in order over non-ASCII text
        pos, item = JSON_WHITESPACE.match(text, JSON_WHITESPACE.match(text).end() + 1).end(), 0  # past "["
        more = text[pos:pos + 1] != "]"  # an empty array has no first element
        while more:
            data, end = decoder.raw_decode(text, pos)
            item += 1
            if ascii_only:
                start, stop = skip + pos, skip + end
            else:
                start = byte + len(text[char:pos].encode())
                char, byte = end, start + len(text[pos:end].encode())
                stop = byte
            problem = record_problem(data, required)
            yield BadInput(place(str(path), item, True), problem) if problem else Located(item, start, stop, data)
            pos = JSON_WHITESPACE.match(text, end).end()
            more = text[pos:pos + 1] == ","
            pos = JSON_WHITESPACE.match(text, pos + 1).end() if more else pos
        if text[pos:pos + 1] != "]" or text[pos + 1:].strip():
            raise ValueError("expected ',' or ']' after an element, and nothing after the array")
    except (ValueError, RecursionError) as exc:  # the whole-document parse names the first fault
        try:
            parse_line(raw[skip:])
            reason = f"invalid JSON ({exc})"
        except ValueError as whole:
            reason = str(whole)
        raise ValueError(f"{path} starts with '[' but is not a valid JSON array: {reason}") from None


def _data_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    return path


def _collect(path: str | Path, scan: Iterator[Located | BadInput], in_array: bool = False
             ) -> tuple[list[Record], list[BadInput]]:
    records, bad = [], []
    for found in scan:
        if isinstance(found, BadInput):
            bad.append(found)
        else:
            records.append(Record(str(Path(path)), found.line, found.data, in_array))
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


def replace_atomically(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """`write` fills a file beside the target, which is flushed to disk and renamed over it (same filesystem,
    so the rename is atomic): a crash leaves the old file or the new one. Checkpoints are written this way too."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, file_mode())
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_mode() -> int:
    """The mode a plainly created file gets here (0644 under the usual umask): a temporary file is made
    owner-only (0600), and renamed into place it would keep that, unreadable to the team sharing a run."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_text_atomic(path: str | Path, text: str) -> None:
    replace_atomically(path, lambda fh: fh.write(text.encode("utf-8")))


def dumps_line(row: Any) -> str:
    return json.dumps(row, ensure_ascii=False) + "\n"


def write_jsonl(path: str | Path, rows: Iterable[Any]) -> None:
    """All rows, one JSON value a line, atomically."""
    write_text_atomic(path, "".join(map(dumps_line, rows)))


def write_json(path: str | Path, value: Any) -> None:
    """One indented JSON document, atomically."""
    write_text_atomic(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")
