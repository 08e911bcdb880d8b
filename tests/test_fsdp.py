"""FSDP's wrap units are named from the model: decoder layers, cross-attention layers, tower blocks.
(FSDP itself needs a GPU; scripts/gpu_check.sh runs it. Here: the units and the strategy's policy.)"""
import pytest
import torch
import sys
from pathlib import Path
from unittest import mock
from types import SimpleNamespace

from lightning.pytorch.strategies import FSDPStrategy
from timm.models.vision_transformer import Block
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from mmllm.layers import CrossAttentionDecoderLayer
from mmllm.model import MMLLM
from mmllm.train.fsdp import NamedUnitsFSDP, repeated_blocks, wrap_units

from conftest import tiny_config

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("arch,units", [
    ("nvlm_d", {LlamaDecoderLayer, Block}),
    ("nvlm_x", {LlamaDecoderLayer, CrossAttentionDecoderLayer, Block}),
    ("nvlm_h", {LlamaDecoderLayer, CrossAttentionDecoderLayer, Block}),
])
def test_each_architecture_wraps_its_decoder_layers_cross_layers_and_tower_blocks(arch, units):
    torch.manual_seed(0)
    assert wrap_units(MMLLM(tiny_config(arch=arch))) == units


def test_a_resnet_tower_wraps_its_bottlenecks_and_nothing_smaller():
    from timm import create_model
    from timm.models.resnet import Bottleneck

    assert repeated_blocks(create_model("resnet50", pretrained=False)) == {Bottleneck}


def test_the_strategy_takes_its_policy_from_the_model_and_checkpoints_the_same_units(monkeypatch):
    torch.manual_seed(0)
    model = MMLLM(tiny_config(arch="nvlm_x"))
    strategy = NamedUnitsFSDP(checkpoint_units=True)
    monkeypatch.setattr(NamedUnitsFSDP, "lightning_module", SimpleNamespace(model=model))
    handed_over = []
    monkeypatch.setattr(FSDPStrategy, "setup", lambda self, trainer: handed_over.append(trainer))  # no real FSDP
    strategy.setup("trainer")
    assert handed_over == ["trainer"]
    expected = {LlamaDecoderLayer, CrossAttentionDecoderLayer, Block}
    assert set(strategy.kwargs["auto_wrap_policy"]._module_classes) == expected
    assert set(strategy._activation_checkpointing_kwargs["auto_wrap_policy"]._module_classes) == expected


def test_a_config_names_the_strategy_by_class_path(tmp_path):
    from mmllm.train.cli import MMLLMCLI
    from mmllm.train.data import MMDataModule
    from mmllm.train.module import MMLLMModule

    config = tmp_path / "fsdp.yaml"
    config.write_text("trainer:\n  strategy:\n    class_path: mmllm.train.fsdp.NamedUnitsFSDP\n"
                      "    init_args: {checkpoint_units: true, sharding_strategy: SHARD_GRAD_OP}\n")
    with mock.patch.object(sys, "argv", sys.argv[:1]):  # pytest's own arguments are not ours
        cli = MMLLMCLI(MMLLMModule, MMDataModule, run=False,
                       args=["--config", str(REPO / "configs" / "nvlm_d_tiny.yaml"), "--config", str(config)])
    strategy = cli.trainer.strategy
    assert isinstance(strategy, NamedUnitsFSDP) and strategy.checkpoint_units
    assert strategy.sharding_strategy.name == "SHARD_GRAD_OP"
