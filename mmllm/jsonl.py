"""Reading and writing the project's JSON Lines files.

Reading never lets one line stop a run: a line that is not UTF-8, not JSON, nested too deep, holding an
integer too long to parse, or not an object comes back as a `BadInput` naming file and line. A UTF-8
byte-order mark at the start of the file is read as the mark it is. Writing is atomic: the text goes to
a temporary file beside the target and is renamed over it, so a crash leaves the old file or the new
one, never half of either.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class Record:
    """One parsed line: the data and where it came from."""

    file: str
    line: int
    data: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.data.get("id", f"{Path(self.file).name}:{self.line}"))

    def where(self) -> str:
        return f"{self.file}:{self.line} (id {self.id})"


@dataclass(frozen=True)
class BadInput:
    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


def parse_line(raw: bytes) -> Any:
    """One line's JSON value; raises ValueError with a reason a user can act on."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"invalid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})") from None
    try:
        return json.loads(text.strip())
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON ({exc.msg} at column {exc.colno})") from None
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
            if not isinstance(data, dict):
                bad.append(BadInput(where, f"expected a JSON object, got {type(data).__name__}"))
                continue
            missing = [k for k in required if k not in data]
            if missing:
                bad.append(BadInput(where, f"missing field(s) {missing}"))
                continue
            records.append(Record(str(path), line_no, data))
    return records, bad


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
