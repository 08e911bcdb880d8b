"""The records one sample and one batch are made of, in a module of their own: the processor builds them, the
data side and the model read them, and none of them has to import another for them."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import torch


class SampleError(ValueError):
    """A sample that cannot be used; the message says what is wrong (the caller adds where)."""


class KVSegment(NamedTuple):
    """One tile or clip that cross-attention reaches, with what tells it apart from the others."""

    kind: str  # "tile" | "audio"
    index: int  # the segment (tile or clip) it is: within the sample in `encode`, within the batch after `collate`
    media: int  # the media item (image or clip) of the sample it belongs to: what the mask follows
    tile: int  # its tile index within the image (X tag tokens see only their own tile); 0 for a clip
    tag: tuple[int, ...]  # its tile-tag token ids (empty without tags, or for a clip)
    slot: int  # its row of the learned tile embedding: k for tile k, max_tiles for the global view; -1: none
    start: int = 0  # where its media item begins in the sample's sequence (what key positions count from)


@dataclass
class Placement:
    """How one image or clip enters a sample (`MMLLMProcessor.image_layout` / `audio_layout`)."""

    ids: list[int]  # the token ids it puts in the sequence: tags, placeholders, the <Image></Image> frame
    tile: list[int]  # per id, the one tile its cross-attention sees (X tile tags); -1: the whole item
    slots: list[int]  # the item's local segments (tiles, or the clip) whose tokens fill its placeholders
    kv: list[KVSegment]  # the segments its cross-attention keys/values are built from


@dataclass
class Sample:
    """One encoded sample (`MMLLMProcessor.encode`): its sequence, what each token sees, and its media.

    Per token: `input_ids`, `labels` (the answer tokens; IGNORE_INDEX elsewhere), `token_media` (the media item,
    image or clip, whose cross-attention it sees: the most recent one, -1 before any) and `token_tile` (-1, or the
    one tile it sees). `media_end` is where the last media item's tokens end: a sequence cut there or later keeps
    every item whole (what a length limit may cut). `truncated` notes the clips cut to the audio window, and the
    data side adds where the sample came from and any cut of its own."""

    input_ids: list[int]
    labels: list[int]
    token_media: list[int]
    token_tile: list[int]
    pixel_values: torch.Tensor  # [tiles, 3, S, S] every image's tiles, in order
    tiles_per_image: list[int]
    audio_values: torch.Tensor  # [clips, n_mels, frames]
    audio_frames: list[int]  # each clip's real length in mel frames
    slots: list[tuple[str, int]] = field(default_factory=list)  # (kind, local segment) filling the placeholders
    kv: list[KVSegment] = field(default_factory=list)  # the segments cross-attention reaches
    media_end: int = 0
    truncated: list[str] = field(default_factory=list)

    def cut(self, limit: int) -> "Sample":
        """The sample's first `limit` tokens (its media untouched: the caller checks `media_end`)."""
        return replace(self, **{f: getattr(self, f)[:limit] for f in TOKEN_FIELDS})

    def located(self, where: str) -> "Sample":
        """The sample with its notes saying where it came from (file:line and id)."""
        return replace(self, truncated=[f"{where}: {note}" for note in self.truncated])


TOKEN_FIELDS = ("input_ids", "labels", "token_media", "token_tile")  # a Sample's lists with one entry per token


@dataclass
class KeyLayout:
    """Every sample's cross-attention keys, laid out by the collator so that the model gathers them in one go
    (no per-sample work on the training path). Per sample row [B, N], padded: -1 / -2 / 0 as noted."""

    row: torch.Tensor  # which row of the batch's segment tokens (every segment's tokens end to end) it is; -1: none
    index: torch.Tensor  # its token's index within its segment; -1: none
    tag: torch.Tensor  # a tag entry (tile_identity "tag_entries"): its token, as an index into `tag_ids`; -1: none
    slot: torch.Tensor  # its learned tile-embedding row (tile_identity "learned"); -1: none
    group: torch.Tensor  # its tile's tag, as an index into `groups` (tile_identity "tag": their mean); -1: none
    media: torch.Tensor  # the media item of the sample it belongs to (what the mask follows); -2: padding
    tile: torch.Tensor  # its tile within the image; -2: padding
    position: torch.Tensor  # its media item's place in the sequence + its index within the item
    tag_ids: list[int]  # the distinct tile-tag tokens the keys use (tile_identity "tag" and "tag_entries")
    groups: list[list[int]]  # the distinct tile tags (indices into `tag_ids`) whose means "tag" keys add

    def to(self, device: torch.device) -> "KeyLayout":
        return replace(self, **{f: getattr(self, f).to(device) for f in KEY_FIELDS})


KEY_FIELDS = ("row", "index", "tag", "slot", "group", "media", "tile", "position")
KEY_FILL = {"row": -1, "index": -1, "tag": -1, "slot": -1, "group": -1, "media": -2, "tile": -2, "position": 0}


@dataclass
class MediaLayout:
    """Where a batch's image tiles and audio clips go; built by `Processor.collate`, read by the model.

    Images and clips are both "media": a sample numbers them in order of appearance (what the
    cross-attention mask follows), and the batch numbers their token segments, every tile of every
    sample first, then every clip.
    """

    slots: torch.Tensor  # [n] segments whose tokens fill the placeholders, in order
    token_media: torch.Tensor  # [B, T] the media item (within its sample) each token's cross-attention sees; -1: none
    token_tile: torch.Tensor  # [B, T] -1: every tile of that image; k: only tile k (NVLM-X tile tags)
    kv: list[list[KVSegment]]  # per sample: the segments its cross-attention keys/values are built from
    audio_frames: torch.Tensor  # [clips] real length of each clip in mel frames; the rest of its window is padding
    keys: KeyLayout
    splice_rows: torch.Tensor  # [placeholders] the segment-token row each placeholder takes, in sequence order
    segment_tokens: int  # how many tokens the batch's segments give, end to end (what the rows index)

    def to(self, device: torch.device) -> "MediaLayout":
        return replace(self, slots=self.slots.to(device), token_media=self.token_media.to(device),
                       token_tile=self.token_tile.to(device), audio_frames=self.audio_frames.to(device),
                       keys=self.keys.to(device), splice_rows=self.splice_rows.to(device))


@dataclass
class ModelInputs:
    """One batch as the model takes it: tensors and where the media go. Bookkeeping (ids, bad samples,
    records) travels beside it, never inside, so moving a batch to a device touches only this."""

    input_ids: torch.Tensor  # [B, T] left-padded
    attention_mask: torch.Tensor  # [B, T]
    labels: torch.Tensor | None  # [B, T] answer tokens, IGNORE_INDEX elsewhere; None: no token is one (prompts)
    pixel_values: torch.Tensor  # [tiles, 3, S, S] every tile of every sample, in sample order
    audio_values: torch.Tensor  # [clips, n_mels, frames]
    layout: MediaLayout
    # Packed rows (`MMLLMProcessor.pack`): positions that restart at every sample, so that no token attends
    # across samples (the LLM builds its mask from them). None: one sample per row.
    position_ids: torch.Tensor | None = None

    def keywords(self) -> dict[str, Any]:
        """The batch as `model(**inputs)` takes it (what the processor's `__call__` returns); `labels` only
        where some token is an answer, `position_ids` only for packed rows."""
        given = {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "labels": self.labels,
                 "pixel_values": self.pixel_values, "audio_values": self.audio_values, "media_layout": self.layout,
                 "position_ids": self.position_ids}
        return {k: v for k, v in given.items() if v is not None}

    def to(self, device: torch.device | str) -> "ModelInputs":
        return ModelInputs(self.input_ids.to(device), self.attention_mask.to(device),
                           None if self.labels is None else self.labels.to(device),
                           self.pixel_values.to(device), self.audio_values.to(device), self.layout.to(device),
                           None if self.position_ids is None else self.position_ids.to(device))
