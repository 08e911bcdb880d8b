"""FSDP whose wrap units are named from the model, not guessed by size.

Each unit is gathered, used and freed on its own, so the unit decides peak memory. The units here:
- every LLM decoder layer, and every cross-attention layer of NVLM-X/H (which holds one decoder layer);
- every repeated block of each tower (a ViT's blocks, a ResNet's bottlenecks, Whisper's layers).

`NamedUnitsFSDP` builds the wrap policy from the module it is given when the run is set up (the model
does not exist yet when the strategy is configured), and with `checkpoint_units` recomputes the same
units in the backward pass through the strategy's own activation checkpointing.

In a config:

    trainer:
      strategy:
        class_path: mmllm.train.fsdp.NamedUnitsFSDP
        init_args: {checkpoint_units: true, sharding_strategy: FULL_SHARD}

FSDP needs a GPU (torch refuses it on the CPU); `scripts/gpu_check.sh` runs it.
"""
from __future__ import annotations

import lightning as L
from lightning.fabric.strategies.fsdp import _activation_checkpointing_kwargs
from lightning.pytorch.strategies import FSDPStrategy
from torch import nn
from torch.distributed.fsdp.wrap import ModuleWrapPolicy

from mmllm.backbone import decoder_layers
from mmllm.layers import CrossAttentionDecoderLayer, InputPositionLayer
from mmllm.model import MMLLM


def repeated_blocks(tower: nn.Module) -> set[type[nn.Module]]:
    """Block types a tower stacks: the one type of a container's children when they are all alike and
    themselves hold layers (a ViT's blocks, a stage's bottlenecks; not a stem of convolution, norm, act)."""
    found: set[type[nn.Module]] = set()
    for module in tower.modules():
        if isinstance(module, (nn.ModuleList, nn.Sequential)):
            kinds = {type(child) for child in module.children()}
            if len(kinds) == 1 and all(any(True for _ in child.children()) for child in module.children()):
                found |= kinds
    return found


def wrap_units(model: MMLLM) -> set[type[nn.Module]]:
    """The module types FSDP wraps one by one: decoder layers (also inside our wrappers), cross-attention
    layers and the towers' repeated blocks."""
    units: set[type[nn.Module]] = set()
    for layer in decoder_layers(model.llm):
        units.add(type(layer))
        while isinstance(layer, (CrossAttentionDecoderLayer, InputPositionLayer)):
            layer = layer.layer
            units.add(type(layer))
    units.discard(InputPositionLayer)  # a thin wrapper: its decoder layer is the unit
    for tower in (model.encoder, model.audio_encoder):
        if tower is not None:
            units |= repeated_blocks(tower)
    return units


class NamedUnitsFSDP(FSDPStrategy):
    def __init__(self, checkpoint_units: bool = False, **kwargs) -> None:
        """`checkpoint_units`: recompute each unit's activations in the backward pass (instead of the
        model's own `--model.gradient_checkpointing`; use one or the other). Other arguments are
        Lightning's `FSDPStrategy` ones; an explicit `auto_wrap_policy` wins over the named units."""
        super().__init__(**kwargs)
        self.checkpoint_units = checkpoint_units

    def setup(self, trainer: L.Trainer) -> None:
        units = wrap_units(self.lightning_module.model)
        self.kwargs.setdefault("auto_wrap_policy", ModuleWrapPolicy(units))
        if self.checkpoint_units:
            self._activation_checkpointing_kwargs = _activation_checkpointing_kwargs(None, ModuleWrapPolicy(units))
        super().setup(trainer)
