"""Sample lengths in tokens, estimated without tokenising text or decoding images: what length-grouped
batching sorts by.

Per record an index keeps the characters of its conversation and each image's (width, height), read from
the image header (shards store it; a JSONL index reads headers only when asked, else the size is unknown).
The estimate is the text at the tokenizer's characters per token plus, per image, the exact number of
sequence tokens the processor lays out for the tile grid that size gets (NVLM-D: 1 tile to max_tiles +
thumbnail; X: only the tile tags; H: the thumbnail), or for an unknown size the most any grid can take.
Audio clips are not counted (their length would need the file's header too).
"""
from __future__ import annotations

from array import array
from dataclasses import dataclass
from functools import cache, partial
from typing import Callable, Sequence

import numpy as np

from mmllm.processor import Processor
from mmllm.tiling import candidate_grids, choose_grid

from .media import UNKNOWN_SIZE

# Ordinary English prose: what the tokenizer's characters per token are measured on.
CALIBRATION_TEXT = (
    "The chart shows monthly sales for three stores. Which store sold the most in March, and by how much "
    "did its sales grow from January? Answer with a single number, then explain the trend in one sentence."
)


@dataclass
class LengthFeatures:
    """What the estimate needs of each record, as flat arrays: a few bytes a record, cheap to pickle."""

    chars: np.ndarray  # [records] characters of the conversation's text
    image_counts: np.ndarray  # [records] images of the record
    image_sizes: np.ndarray  # [images, 2] (width, height) of every image in record order; -1: unknown

    @classmethod
    def concatenate(cls, parts: Sequence["LengthFeatures"]) -> "LengthFeatures":
        return cls(*(np.concatenate([getattr(p, name) for p in parts]) for name in ("chars", "image_counts",
                                                                                      "image_sizes")))


class FeatureBuilder:
    """Collects features record by record into compact arrays (no Python object per record)."""

    def __init__(self) -> None:
        self.chars, self.counts, self.sizes = array("q"), array("i"), array("i")

    def add(self, data: dict, sizes: Sequence[tuple[int, int]]) -> None:
        self.chars.append(text_chars(data))
        self.counts.append(len(sizes))
        for size in sizes:
            self.sizes.extend(size)

    def build(self) -> LengthFeatures:
        """Views of the collected buffers (no copy)."""
        return LengthFeatures(np.frombuffer(self.chars, dtype=np.int64), np.frombuffer(self.counts, dtype=np.int32),
                              np.frombuffer(self.sizes, dtype=np.int32).reshape(-1, 2))


def text_chars(data: dict) -> int:
    """Characters of a record's turns (0 for a malformed conversation: loading it reports why)."""
    try:
        return sum(len(turn["value"]) for turn in data["conversations"])
    except (KeyError, TypeError):
        return 0


def image_count(data: dict) -> int:
    """How many images the `image` field names (a path or a list); a wrong type counts none (it is a bad sample)."""
    value = data.get("image")
    return 1 if isinstance(value, str) else len(value) if isinstance(value, list) else 0


def estimate_lengths(processor: Processor, features: LengthFeatures) -> np.ndarray:
    """Estimated tokens per record (int64)."""
    text = np.ceil(features.chars / chars_per_token(processor))
    sizes, inverse = np.unique(features.image_sizes, axis=0, return_inverse=True)
    layout = cache(partial(grid_tokens, processor))  # many sizes, few grids
    per_image = np.array([image_tokens(processor, int(w), int(h), layout) for w, h in sizes], dtype=np.int64)
    owner = np.repeat(np.arange(len(features.chars)), features.image_counts)
    images = np.bincount(owner, weights=per_image[inverse.ravel()], minlength=len(features.chars))
    return (text + images).astype(np.int64)


def chars_per_token(processor: Processor) -> float:
    return len(CALIBRATION_TEXT) / len(processor.tokenizer(CALIBRATION_TEXT, add_special_tokens=False).input_ids)


def image_tokens(processor: Processor, width: int, height: int, layout: Callable[[tuple[int, int]], int]) -> int:
    """Sequence tokens of one image of this size (`layout`: this processor's `grid_tokens`); the largest
    over all grids when the size is unknown."""
    max_tiles = processor.config.max_tiles
    if (width, height) == UNKNOWN_SIZE:
        return max(map(layout, candidate_grids(max_tiles)))
    return layout(choose_grid(width, height, processor.tile_size, max_tiles))


def grid_tokens(processor: Processor, grid: tuple[int, int]) -> int:
    """Sequence tokens the processor lays out for an image tiled as `grid` (the thumbnail included)."""
    n_tiles = grid[0] * grid[1] + (processor.config.use_thumbnail and grid[0] * grid[1] > 1)
    return len(processor.image_layout(n_tiles, grid, 0).ids)
