"""What every encoder family shares: the output contract, geometry and config checks.

A family file only builds its library's model and says how to get a feature map out of it;
token layout, geometry and input checks live here so every family behaves the same.
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from .config import AudioConfig, ConfigError, EncoderConfig


class Checkpointable(ABC):
    """Towers trade compute for memory through their own library's switch."""

    @abstractmethod
    def set_gradient_checkpointing(self, on: bool) -> None:
        """Recompute each block's activations in the backward pass instead of keeping them."""


def hf_gradient_checkpointing(model, on: bool) -> None:
    """The Hugging Face switch (non-reentrant, so frozen inputs need no grad)."""
    if on:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.activation_checkpointing_disable()


@dataclass(frozen=True)
class TowerShape:
    """What the processor needs of a vision tower: the tile it takes, its patch grid and width, and the pixel
    statistics to normalise with. `registry.tower_shape` reads it from a config without building the weights."""

    image_size: tuple[int, int]
    grid: tuple[int, int]
    dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


class VisionEncoder(nn.Module, Checkpointable):
    """A vision tower that turns one batch of tiles into row-major patch tokens.

    `forward` maps normalised pixels [B, 3, H, W] to [B, rows*cols, dim] with no class/prefix
    tokens, so connectors can rely on a fixed grid (pixel shuffle needs rows and cols). Every
    family drops them the same way: timm and open_clip through `forward_intermediates`, which
    splits them off, hf by its embeddings' count of positions beyond the patches.
    The tokens are the output of block `EncoderConfig.feature_layer`; families cut the tower right
    after it (see `layer_index`), so every parameter left feeds the features.
    `mean`/`std` come from the library's own config for this model: the processor normalises
    with them, so pretrained weights see the statistics they were trained with.
    A family built with `weights=False` reads every config it would read but no weight file (random init),
    which is all `shape` needs.
    """

    family: ClassVar[str]
    grid: tuple[int, int]
    dim: int
    image_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __init__(
        self,
        model: nn.Module,
        image_size: tuple[int, int],
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        super().__init__()
        self.model = model
        self.image_size = image_size
        self.mean = triple(mean)
        self.std = triple(std)
        self.dim, rows, cols = self._probe_feature_map_shape()
        self.grid = (rows, cols)

    @property
    def shape(self) -> TowerShape:
        return TowerShape(self.image_size, self.grid, self.dim, self.mean, self.std)

    @abstractmethod
    def feature_map(self, pixel_values: Tensor) -> Tensor:
        """The chosen layer's output as a patch map [B, C, h, w], prefix tokens dropped; per family."""

    def forward(self, pixel_values: Tensor) -> Tensor:
        expected = (3, *self.image_size)
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(
                f"{self.family} encoder takes tiles of shape [B, {', '.join(map(str, expected))}], "
                f"got {list(pixel_values.shape)}"
            )
        return self.feature_map(pixel_values.to(compute_dtype(self.model))).flatten(2).transpose(1, 2)

    @torch.no_grad()
    def _probe_feature_map_shape(self) -> tuple[int, int, int]:
        """(C, h, w) from one blank tile through the real forward.

        Libraries expose geometry inconsistently (patch grids, stage reductions, conv padding
        rules); running the model once is exact for every architecture. Eval mode keeps the
        probe from touching BatchNorm statistics; zeros and no dropout keep the RNG untouched.
        """
        was_training = self.training
        self.eval()
        c, h, w = self.feature_map(torch.zeros(1, 3, *self.image_size)).shape[1:]
        self.train(was_training)
        return c, h, w


def compute_dtype(tower: nn.Module) -> torch.dtype:
    """The dtype a tower computes in now: its first weight's (the stem's), read when it runs, so that it is the
    gathered weights' dtype under FSDP's mixed precision and the weights' own otherwise."""
    return next(p.dtype for p in tower.parameters() if p.is_floating_point())


class AudioEncoder(nn.Module, Checkpointable):
    """A speech tower: log-mel features [B, n_mels, n_frames] of a padded window -> states [B, n_states, dim].

    The whole window is encoded (Whisper is trained on padded 30 s windows); `out_length` says how
    many leading states cover a clip's real frames, which is all the model keeps.
    """

    family: ClassVar[str]
    dim: int
    n_mels: int
    n_frames: int
    stride: int  # input frames per output state

    @abstractmethod
    def states(self, features: Tensor) -> Tensor:
        """[B, n_mels, n_frames] -> [B, n_frames / stride, dim]; per family."""

    def out_length(self, frames: int) -> int:
        return -(-frames // self.stride)

    def forward(self, features: Tensor) -> Tensor:
        if features.ndim != 3 or tuple(features.shape[1:]) != (self.n_mels, self.n_frames):
            raise ValueError(
                f"{self.family} encoder takes log-mel features [B, {self.n_mels}, {self.n_frames}], "
                f"got {list(features.shape)}"
            )
        return self.states(features.to(compute_dtype(self.model)))


def tile_size(size: int | Sequence[int]) -> tuple[int, int]:
    """`EncoderConfig.image_size` as (H, W): an int means a square tile; YAML gives lists."""
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if len(hw) != 2 or not all(isinstance(s, int) and s > 0 for s in hw):
        raise ConfigError(f"encoder.image_size must be a positive int or [H, W], got {size!r}")
    return hw


def layer_index(cfg: EncoderConfig, num_layers: int) -> int:
    """`cfg.feature_layer` as an index into the tower's `num_layers` blocks (or stages, for conv nets).

    Python-style: -1 is the last block, -2 the penultimate, LLaVA's `hidden_states[-2]` (a
    non-negative k is block k counted from 0, i.e. `hidden_states[k + 1]`).
    Final norm: removed at every layer, with the pooling head, so features are the raw block output as LLaVA reads them.
    """
    if not -num_layers <= cfg.feature_layer < num_layers:
        raise ConfigError(
            f"encoder.feature_layer {cfg.feature_layer} is out of range: {cfg.family} model {cfg.model!r} "
            f"has {num_layers} layers, so valid values are {-num_layers}..{num_layers - 1} (-1 is the last)"
        )
    return cfg.feature_layer % num_layers


def weights_file(cfg: EncoderConfig) -> str | None:
    """`cfg.pretrained` as an existing local file, or None when it is True/False."""
    return _local_weights(cfg, "file")


def weights_dir(cfg: EncoderConfig | AudioConfig, section: str = "encoder") -> str | None:
    """`cfg.pretrained` as an existing local model directory, or None when it is True/False."""
    return _local_weights(cfg, "directory", section)


def _local_weights(
    cfg: EncoderConfig | AudioConfig, kind: Literal["file", "directory"], section: str = "encoder"
) -> str | None:
    """Checked up front because the libraries would treat a mistyped path as a name to look up
    online (or fail with a bare FileNotFoundError)."""
    if isinstance(cfg.pretrained, bool):
        return None
    path = os.fspath(cfg.pretrained)
    exists = os.path.isfile if kind == "file" else os.path.isdir
    if not exists(path):
        raise ConfigError(f"{section}.pretrained: no weights {kind} at {path!r} (use true/false or a local {kind})")
    return path


def triple(values: Sequence[float], name: str = "mean/std") -> tuple[float, float, float]:
    """Per-channel RGB values; anything but three numbers is a ConfigError naming the field."""
    if len(values) != 3:
        raise ConfigError(f"{name} needs 3 values (R, G, B), got {list(values)}")
    r, g, b = (float(v) for v in values)
    return r, g, b
