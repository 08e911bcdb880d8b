"""Turns conversations and images into model inputs: tiling, tile tags, prompt layout, tokens."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .config import ProcessorConfig
from .tiling import tile_image, tile_tags
from .tokenizer import IMAGE_PAD

IMAGE_MARKER = "<image>"
IGNORE_INDEX = -100


class SampleError(ValueError):
    """A sample that cannot be used; the message says what is wrong (the caller adds where)."""


def load_image(path: str | Path, max_side: int) -> Image.Image:
    """Open, fully decode and check an image, so a bad file fails here and not mid-batch."""
    path = Path(path)
    if not path.is_file():
        raise SampleError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            image = im.convert("RGB")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, SyntaxError) as exc:
        raise SampleError(f"cannot decode image {path}: {exc}") from None
    check_image_size(image, max_side)
    return image


def check_image_size(image: Image.Image, max_side: int) -> None:
    w, h = image.size
    if min(w, h) < 1 or max(w, h) > max_side:
        raise SampleError(f"image size {w}x{h} is outside 1..{max_side} pixels per side")


class Processor:
    """Builds the decoder sequence for one architecture.

    NVLM-D layout of one image: `<Image>` + for each tile (thumbnail last) its tag text followed
    by `tokens_per_tile` placeholder tokens + `</Image>`; the model swaps the placeholders for
    image embeddings. Loss is taken on assistant turns only.
    """

    def __init__(
        self,
        config: ProcessorConfig,
        tokenizer,
        arch: str,
        tile_size: int,
        tokens_per_tile: int,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        self.config, self.tokenizer, self.arch = config, tokenizer, arch
        self.tile_size, self.tokens_per_tile = tile_size, tokens_per_tile
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
        self._text_cache: dict[str, list[int]] = {}

    # -- text ---------------------------------------------------------------------------------
    def text_ids(self, text: str) -> list[int]:
        """Tokenize without specials; fixed strings (tags, prefixes) are tokenized once."""
        if text in self._text_cache:
            return self._text_cache[text]
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        if len(self._text_cache) < 4096:
            self._text_cache[text] = ids
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True).strip()

    # -- images -------------------------------------------------------------------------------
    def load_image(self, path: str | Path) -> Image.Image:
        return load_image(path, self.config.max_image_side)

    def tiles(self, image: Image.Image) -> tuple[torch.Tensor, tuple[int, int]]:
        """Normalised tiles [n, 3, S, S] of one image and its (cols, rows) grid."""
        check_image_size(image, self.config.max_image_side)
        tiles, grid = tile_image(image.convert("RGB"), self.tile_size, self.config.max_tiles, self.config.use_thumbnail)
        pixels = torch.from_numpy(np.stack([np.asarray(t, dtype=np.float32) for t in tiles])).permute(0, 3, 1, 2)
        return (pixels / 255.0 - self.mean) / self.std, grid

    def image_ids(self, n_tiles: int, grid: tuple[int, int]) -> list[int]:
        ids = list(self.text_ids("<Image>"))
        for tag in tile_tags(self.config.tile_tag, grid, n_tiles):
            ids += self.text_ids(tag) if tag else []
            ids += [self.image_token_id] * self.tokens_per_tile
        return ids + self.text_ids("</Image>")

    # -- samples ------------------------------------------------------------------------------
    def encode(self, conversations: Sequence[dict], images: Sequence[Image.Image], add_generation_prompt: bool = False) -> dict:
        """One sample -> input_ids, labels (answer tokens only), pixel_values, tiles per image."""
        tiled = [self.tiles(im) for im in images]
        n_markers = sum(turn["value"].count(IMAGE_MARKER) for turn in conversations)
        if n_markers != len(images):
            raise SampleError(f"{n_markers} {IMAGE_MARKER} marker(s) in the text but {len(images)} image(s)")
        ids = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        labels = [IGNORE_INDEX] * len(ids)
        next_image = iter(tiled)
        for turn in conversations:
            role, value = turn.get("from"), turn.get("value")
            if role in ("human", "user"):
                piece = self.text_ids(self.config.user_prefix)
                for i, chunk in enumerate(value.split(IMAGE_MARKER)):
                    if i:
                        pixels, grid = next(next_image)
                        piece = piece + self.image_ids(len(pixels), grid)
                    piece = piece + self.text_ids(chunk)
                ids += piece
                labels += [IGNORE_INDEX] * len(piece)
            elif role in ("gpt", "assistant"):
                prefix = self.text_ids(self.config.assistant_prefix)
                answer = self.text_ids(value) + [self.tokenizer.eos_token_id]
                ids += prefix + answer
                labels += [IGNORE_INDEX] * len(prefix) + answer
            else:
                raise SampleError(f"unknown conversation role {role!r} (expected human/gpt)")
        if add_generation_prompt:
            ids += self.text_ids(self.config.assistant_prefix)
            labels += [IGNORE_INDEX] * len(self.text_ids(self.config.assistant_prefix))
        pixel_values = torch.cat([p for p, _ in tiled]) if tiled else torch.zeros(0, 3, self.tile_size, self.tile_size)
        return {"input_ids": ids, "labels": labels, "pixel_values": pixel_values, "tiles_per_image": [len(p) for p, _ in tiled]}

    def encode_prompt(self, question: str, images: Sequence[Image.Image]) -> dict:
        """A generation prompt: the question (with one image marker per image) and the assistant prefix."""
        if images and IMAGE_MARKER not in question:
            question = "".join(IMAGE_MARKER + "\n" for _ in images) + question
        return self.encode([{"from": "human", "value": question}], images, add_generation_prompt=True)

    def collate(self, samples: Sequence[dict]) -> dict:
        """Left-pad to the longest sample; tiles of all samples are stacked in sample order."""
        width = max(len(s["input_ids"]) for s in samples)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(samples), width), pad, dtype=torch.long)
        labels = torch.full((len(samples), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(samples), width), dtype=torch.long)
        for row, s in enumerate(samples):
            n = len(s["input_ids"])
            input_ids[row, width - n:] = torch.tensor(s["input_ids"])
            labels[row, width - n:] = torch.tensor(s["labels"])
            attention_mask[row, width - n:] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "pixel_values": torch.cat([s["pixel_values"] for s in samples]),
            "tiles_per_image": [n for s in samples for n in s["tiles_per_image"]],
        }
