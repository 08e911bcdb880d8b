"""A record's media: where its image and audio files are, decoding them (from files or from bytes embedded in
a shard), and an image's size read from its header alone (for length estimates, without decoding)."""
from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO

from PIL import Image

from mmllm.jsonl import Record
from mmllm.processor import Processor
from mmllm.sample import SampleError

UNKNOWN_SIZE = (-1, -1)


def paths_of(record: Record, key: str, folder: str | None = None) -> list[str]:
    """The record's `image` or `audio` paths (one or a list), resolved against `folder` (LLaVA keeps images
    apart from its JSON) or else the data file's folder. Any other value is a SampleError naming field and type."""
    value = record.data.get(key)
    paths = [] if value is None else [value] if isinstance(value, str) else value
    if not isinstance(paths, list):
        raise SampleError(f"field {key!r} must be a path or a list of paths, got {type(value).__name__}")
    wrong = sorted({type(p).__name__ for p in paths if not isinstance(p, str)})
    if wrong:
        raise SampleError(f"field {key!r} must be a path or a list of paths, got a list holding {', '.join(wrong)}")
    base = Path(folder) if folder is not None else Path(record.file).parent
    return [str(base / p) for p in paths]


def load_media(processor: Processor, record: Record, folder: str | None = None) -> tuple[list, list]:
    """Decode and check every image and audio clip of a record (a bad one raises SampleError)."""
    images = [processor.load_image(p) for p in paths_of(record, "image", folder)]
    return images, [processor.load_audio(p) for p in paths_of(record, "audio", folder)]


def open_image(data: bytes, name: str, processor: Processor) -> Image.Image:
    """An image embedded as bytes (a shard's), decoded and checked as `Processor.load_image` decodes a file,
    so a corrupt one fails here, as a SampleError naming it, and not mid-batch."""
    return processor.open_image(io.BytesIO(data), f"embedded image {name}")


def image_size(source: str | BinaryIO) -> tuple[int, int]:
    """(width, height) from the image's header (Pillow decodes no pixels to tell it); UNKNOWN_SIZE when the
    file is missing or unreadable (loading the sample reports that, not the estimate)."""
    try:
        with Image.open(source) as im:
            return im.size
    except Exception:  # whatever the decoder raises: loading the sample names it
        return UNKNOWN_SIZE
