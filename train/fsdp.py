"""Sharded training whose units are named from the model, not guessed by size: FSDP1 and FSDP2.

Each unit is gathered, used and freed on its own, so the unit decides peak memory and which gradients are
reduced together. The units, innermost first (`shard_units`):
- every repeated block of each tower (a ViT's blocks, a ResNet's bottlenecks, Whisper's layers), then each
  tower itself (its stem and norms), each projector / audio connector;
- every LLM decoder layer, then every cross-attention layer of NVLM-X/H around it (which then holds only the
  gated block), the input embeddings and, when not tied to them, the output head;
- the root: what is left (final norms, the tile-position table).
Frozen vocabulary matrices and the tower's stem so never share a unit with the trainable connector.

`NamedUnitsFSDP` is Lightning's FSDP (torch's FSDP1) with these units; `NamedUnitsFSDP2` is Lightning's
`ModelParallelStrategy` applying `fully_shard` (FSDP2) to the same units. Both run on GPUs (NCCL) and on the
CPU (gloo), which is how the test suite runs them with two processes. With `checkpoint_units` the decoder
layers, the gated cross-attention blocks and the tower blocks recompute their activations in the backward pass.

In a config:

    trainer:
      strategy:
        class_path: mmllm.train.fsdp.NamedUnitsFSDP2   # or NamedUnitsFSDP (FSDP1)
        init_args: {checkpoint_units: true}

Checkpoints are consolidated (one file, the full state gathered on rank 0) unless a sharded one is asked for
(`state_dict_type: sharded` / `save_distributed_checkpoint: true`); `mmllm export`, `--model.init_from` and
`--ckpt_path last` read both.
"""
from __future__ import annotations

from datetime import timedelta
from typing import Any

import lightning as L
from lightning.fabric.strategies.fsdp import _setup_activation_checkpointing
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy
from torch import nn
from torch.optim import Optimizer
from torch.distributed.fsdp.wrap import CustomPolicy

from mmllm.backbone import decoder_layers
from mmllm.connectors import GatedCrossAttention
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


def inner_layer(layer: nn.Module) -> nn.Module:
    """The LLM's own decoder layer inside our wrappers (input positions, cross-attention)."""
    while isinstance(layer, (CrossAttentionDecoderLayer, InputPositionLayer)):
        layer = layer.layer
    return layer


def towers(model: MMLLM) -> list[nn.Module]:
    return [t for t in (model.encoder, model.audio_encoder) if t is not None]


def shard_units(model: MMLLM) -> list[nn.Module]:
    """The modules that become units, innermost first (FSDP2 shards bottom-up in this order; the root is not
    listed). A tied output head stays in the root with its embeddings: a parameter lives in one unit."""
    units: list[nn.Module] = []
    for tower in towers(model):
        kinds = tuple(repeated_blocks(tower))
        units += [m for m in tower.modules() if kinds and isinstance(m, kinds)] + [tower]
    units += [m for m in (model.projector, model.audio_connector) if m is not None]
    for layer in decoder_layers(model.llm):
        units.append(inner_layer(layer))
        units += [m for m in layer.modules() if isinstance(m, CrossAttentionDecoderLayer)]
    embeddings, head = model.llm.get_input_embeddings(), model.llm.get_output_embeddings()
    units.append(embeddings)
    if head is not None and head.weight is not embeddings.weight:
        units.append(head)
    return units


def recomputed_llm_types(model: MMLLM) -> set[type[nn.Module]]:
    """The LLM's blocks that recompute: its decoder layers and the gated blocks (the gated block rather than
    its cross-attention layer, whose media memory lives for one call only)."""
    kinds = {type(inner_layer(layer)) for layer in decoder_layers(model.llm)}
    return kinds | ({GatedCrossAttention} if model.cross_layers() else set())


def recomputed_types(model: MMLLM) -> set[type[nn.Module]]:
    """What `checkpoint_units` recomputes: the LLM's blocks and the towers' blocks."""
    kinds = recomputed_llm_types(model)
    for tower in towers(model):
        kinds |= repeated_blocks(tower)
    return kinds


def recompute(module: nn.Module, kinds: set[type[nn.Module]]) -> None:
    """Wraps every submodule of these types so that it recomputes its activations in the backward pass."""
    _setup_activation_checkpointing(module, {"check_fn": lambda m: isinstance(m, tuple(kinds))})


class NamedUnitsFSDP(FSDPStrategy):
    """Torch's FSDP1 over the named units; on the CPU it runs with gloo (`device_id` the CPU)."""

    def __init__(self, checkpoint_units: bool = False, state_dict_type: str = "full", **kwargs: Any) -> None:
        """`checkpoint_units`: recompute the units' activations in the backward pass (instead of
        `--model.gradient_checkpointing`; use one or the other). `state_dict_type`: "full" (one consolidated
        checkpoint file) or "sharded" (a folder, one file per rank). Other arguments are Lightning's
        `FSDPStrategy` ones; `use_orig_params` defaults to True, which frozen parts next to trainable ones need."""
        kwargs.setdefault("use_orig_params", True)
        super().__init__(state_dict_type=state_dict_type, **kwargs)
        self.checkpoint_units = checkpoint_units

    def _setup_model(self, model: nn.Module) -> nn.Module:
        from torch.distributed.fsdp import FullyShardedDataParallel

        mmllm = self.lightning_module.model
        units, kinds = {id(m) for m in shard_units(mmllm)}, recomputed_types(mmllm)  # named before wrapping
        self.kwargs.setdefault("auto_wrap_policy", CustomPolicy(lambda m: id(m) in units))
        device = self.root_device if self.root_device.type == "cpu" else self.root_device.index
        wrapped = FullyShardedDataParallel(module=model, cpu_offload=self.cpu_offload,
                                           mixed_precision=self.mixed_precision_config,
                                           sharding_strategy=self.sharding_strategy, device_id=device, **self.kwargs)
        if self.checkpoint_units:
            recompute(wrapped, kinds)
        return wrapped


    def lightning_module_state_dict(self) -> dict[str, Any]:
        if self._state_dict_type != "full" or self.root_device.type != "cpu":
            return super().lightning_module_state_dict()
        with full_state_on_cpu(self.model):
            return self.model.state_dict()

    def optimizer_state(self, optimizer: Optimizer) -> dict[str, Any]:
        if self._state_dict_type != "full" or self.root_device.type != "cpu":
            return super().optimizer_state(optimizer)
        from torch.distributed.fsdp import FullyShardedDataParallel, OptimStateKeyType

        optimizer = getattr(optimizer, "_optimizer", optimizer)  # Lightning's wrapper
        with full_state_on_cpu(self.model):
            state = FullyShardedDataParallel.optim_state_dict(self.model, optimizer)
        if self.global_rank == 0:  # keyed by parameter index, as an unsharded run's optimizer state is
            state = FullyShardedDataParallel.rekey_optim_state_dict(state, OptimStateKeyType.PARAM_ID, self.model)
        return state


def full_state_on_cpu(model: nn.Module):
    """The full state gathered on rank 0 without "offloading to the CPU": FSDP1 on the CPU crashes (SIGSEGV)
    cloning a state it has offloaded to the device it is already on."""
    from torch.distributed.fsdp import (FullOptimStateDictConfig, FullStateDictConfig, FullyShardedDataParallel,
                                        StateDictType)

    return FullyShardedDataParallel.state_dict_type(model, StateDictType.FULL_STATE_DICT,
                                                    FullStateDictConfig(offload_to_cpu=False, rank0_only=True),
                                                    FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=True))


class NamedUnitsFSDP2(ModelParallelStrategy):
    """Torch's FSDP2 (`fully_shard`) over the named units, through Lightning's `ModelParallelStrategy`: every
    process holds one shard of each parameter (no tensor parallelism)."""

    def __init__(self, checkpoint_units: bool = False, reshard_after_forward: bool = True,
                 save_distributed_checkpoint: bool = False, process_group_backend: str | None = None,
                 timeout: timedelta | None = timedelta(minutes=30)) -> None:
        """`reshard_after_forward`: free each unit's gathered weights after its forward (ZeRO-3; False keeps
        them to the backward, ZeRO-2). `save_distributed_checkpoint`: a folder of shards instead of one
        consolidated file."""
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1,
                         save_distributed_checkpoint=save_distributed_checkpoint,
                         process_group_backend=process_group_backend, timeout=timeout)
        self.checkpoint_units, self.reshard_after_forward = checkpoint_units, reshard_after_forward

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes  # every process is a data-parallel shard
        super().setup_environment()

    def shard(self, module: L.LightningModule) -> None:
        """Applies `fully_shard` bottom-up: each unit, then the root (called from `configure_model`)."""
        from torch.distributed.fsdp import FSDPModule, fully_shard

        model = module.model
        if isinstance(model, FSDPModule):  # configure_model runs again for validate/test after fit
            return
        if self.checkpoint_units:
            recompute(model, recomputed_types(model))
        mesh = self.device_mesh["data_parallel"]
        # Weights stay in their own dtype: `bf16-mixed` autocasts the compute, as without sharding.
        for unit in [*shard_units(model), model]:
            fully_shard(unit, mesh=mesh, reshard_after_forward=self.reshard_after_forward)
