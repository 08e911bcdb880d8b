"""Turns conversations and images into model inputs: tiling, tile tags, prompt layout, tokens."""
from __future__ import annotations

from dataclasses import dataclass, replace
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


@dataclass
class ImageLayout:
    """Where a batch's image features go; built by `Processor.collate`, read by the model."""

    slots: torch.Tensor  # [n] batch-wide tile indices whose features fill the placeholders, in order
    token_image: torch.Tensor  # [B, T] the image (within its sample) each token's cross-attention sees; -1: none
    token_tile: torch.Tensor  # [B, T] -1: every tile of that image; k: only tile k (NVLM-X tile tags)
    kv: list[list[tuple]]  # per sample: ("tile", batch tile index, image, tile) | ("text", tag ids, image, tile)

    def to(self, device: torch.device) -> "ImageLayout":
        return replace(self, slots=self.slots.to(device), token_image=self.token_image.to(device),
                       token_tile=self.token_tile.to(device))


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

    def image_layout(self, n_tiles: int, grid: tuple[int, int], image: int) -> dict:
        """How one image enters the model, per architecture (design.md §2).

        - nvlm_d: every tile's tag text + placeholders in the decoder sequence.
        - nvlm_x: only the tag text in the sequence; each tag attends to its own tile, the tiles
          (thumbnail included) are cross-attention keys/values.
        - nvlm_h: the thumbnail (or the lone tile) as placeholders in the sequence; the regular tiles,
          each with its tag-text embeddings prepended, are cross-attention keys/values.
        Returns the sequence ids, each id's tile restriction (-1: the whole image), the local tile
        indices that fill the placeholders, and the key/value segments.
        """
        tags = tile_tags(self.config.tile_tag, grid, n_tiles)
        in_sequence = range(n_tiles) if self.arch == "nvlm_d" else [n_tiles - 1] if self.arch == "nvlm_h" else []
        ids, token_tile, slots, kv = list(self.text_ids("<Image>")), [], [], []
        for k, tag in enumerate(tags):
            tag_ids = self.text_ids(tag) if tag else []
            if k in in_sequence:
                ids += tag_ids + [self.image_token_id] * self.tokens_per_tile
                slots.append(k)
                continue
            if self.arch == "nvlm_x":  # the tag stays in the sequence and sees only its tile
                token_tile += [-1] * (len(ids) - len(token_tile)) + [k] * len(tag_ids)
                ids += tag_ids
            elif tag_ids:  # nvlm_h: the tag's embeddings lead the tile's keys/values
                kv.append(("text", tag_ids, image, k))
            kv.append(("tile", k, image, k))
        ids += self.text_ids("</Image>")
        token_tile += [-1] * (len(ids) - len(token_tile))
        return {"ids": ids, "tile": token_tile, "slots": slots, "kv": kv}

    # -- samples ------------------------------------------------------------------------------
    def encode(self, conversations: Sequence[dict], images: Sequence[Image.Image], add_generation_prompt: bool = False) -> dict:
        """One sample -> input_ids, labels (answer tokens only), pixel_values and the image layout.

        `token_image` is, per token, the image whose tiles its cross-attention sees: the most recent
        image (OpenFlamingo rule), -1 before any image.
        """
        tiled = [self.tiles(im) for im in images]
        n_markers = sum(turn["value"].count(IMAGE_MARKER) for turn in conversations)
        if n_markers != len(images):
            raise SampleError(f"{n_markers} {IMAGE_MARKER} marker(s) in the text but {len(images)} image(s)")
        ids = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        labels, token_image, token_tile = [IGNORE_INDEX] * len(ids), [-1] * len(ids), [-1] * len(ids)
        slots, kv, offset, image = [], [], 0, -1

        def add(new_ids: list[int], new_labels: list[int] | None = None, tiles: list[int] | None = None) -> None:
            ids.extend(new_ids)
            labels.extend(new_labels or [IGNORE_INDEX] * len(new_ids))
            token_image.extend([image] * len(new_ids))
            token_tile.extend(tiles or [-1] * len(new_ids))

        for turn in conversations:
            role, value = turn.get("from"), turn.get("value")
            if role in ("human", "user"):
                add(self.text_ids(self.config.user_prefix))
                for i, chunk in enumerate(value.split(IMAGE_MARKER)):
                    if i:
                        image += 1
                        pixels, grid = tiled[image]
                        layout = self.image_layout(len(pixels), grid, image)
                        add(layout["ids"], tiles=layout["tile"])
                        slots += [offset + k for k in layout["slots"]]
                        for kind, payload, img, tile in layout["kv"]:  # tile indices become sample-wide
                            kv.append((kind, offset + payload if kind == "tile" else payload, img, tile))
                        offset += len(pixels)
                    add(self.text_ids(chunk))
            elif role in ("gpt", "assistant"):
                prefix = self.text_ids(self.config.assistant_prefix)
                answer = self.text_ids(value) + [self.tokenizer.eos_token_id]
                add(prefix + answer, [IGNORE_INDEX] * len(prefix) + answer)
            else:
                raise SampleError(f"unknown conversation role {role!r} (expected human/gpt)")
        if add_generation_prompt:
            add(self.text_ids(self.config.assistant_prefix))
        pixel_values = torch.cat([p for p, _ in tiled]) if tiled else torch.zeros(0, 3, self.tile_size, self.tile_size)
        return {
            "input_ids": ids, "labels": labels, "pixel_values": pixel_values,
            "tiles_per_image": [len(p) for p, _ in tiled],
            "token_image": token_image, "token_tile": token_tile, "slots": slots, "kv": kv,
        }

    def encode_prompt(self, question: str, images: Sequence[Image.Image]) -> dict:
        """A generation prompt: the question (with one image marker per image) and the assistant prefix."""
        if images and IMAGE_MARKER not in question:
            question = "".join(IMAGE_MARKER + "\n" for _ in images) + question
        return self.encode([{"from": "human", "value": question}], images, add_generation_prompt=True)

    def collate(self, samples: Sequence[dict]) -> dict:
        """Left-pad to the longest sample; tiles of all samples are stacked in sample order."""
        width = max(len(s["input_ids"]) for s in samples)
        batch = {key: torch.full((len(samples), width), fill, dtype=torch.long) for key, fill in (
            ("input_ids", self.tokenizer.pad_token_id), ("attention_mask", 0), ("labels", IGNORE_INDEX),
            ("token_image", -1), ("token_tile", -1))}
        slots, kv, offset = [], [], 0
        for row, s in enumerate(samples):
            n = len(s["input_ids"])
            for key in ("input_ids", "labels", "token_image", "token_tile"):
                batch[key][row, width - n:] = torch.tensor(s[key])
            batch["attention_mask"][row, width - n:] = 1
            slots += [offset + k for k in s["slots"]]
            kv.append([(kind, offset + p if kind == "tile" else p, img, tile) for kind, p, img, tile in s["kv"]])
            offset += len(s["pixel_values"])
        batch["pixel_values"] = torch.cat([s["pixel_values"] for s in samples])
        batch["tiles_per_image"] = [n for s in samples for n in s["tiles_per_image"]]
        batch["layout"] = ImageLayout(torch.tensor(slots, dtype=torch.long), batch.pop("token_image"),
                                      batch.pop("token_tile"), kv)
        return batch
