"""The LLM backbone: any `AutoModelForCausalLM`, loaded by name/path or built from a config object."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from .config import LLMConfig


def llm_config(cfg: LLMConfig, tokenizer) -> PretrainedConfig:
    """The HF config of the backbone; a built-from-options one gets the tokenizer's size and ids."""
    if cfg.name_or_path:
        return AutoConfig.from_pretrained(cfg.name_or_path, trust_remote_code=False)
    return AutoConfig.for_model(
        cfg.model_type,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **cfg.options,
    )


def build_llm(cfg: LLMConfig, tokenizer, hf_config: PretrainedConfig | dict[str, Any] | None = None) -> PreTrainedModel:
    """Pretrained weights when a name/path is given (and no saved config overrides it), else random init.

    `hf_config` rebuilds a saved model's exact backbone offline; its weights come from our safetensors.
    """
    if isinstance(hf_config, dict):
        hf_config = AutoConfig.for_model(**hf_config)  # a registered model_type only: no code is loaded
    if hf_config is None and cfg.name_or_path:
        # float32 whatever the checkpoint's dtype: these are the optimizer's master weights, and
        # `--trainer.precision` decides the compute dtype (bf16-mixed autocasts; bf16-true casts the weights).
        model = AutoModelForCausalLM.from_pretrained(cfg.name_or_path, trust_remote_code=False, dtype=torch.float32,
                                                     attn_implementation=cfg.attn_implementation)
    else:
        model = AutoModelForCausalLM.from_config(hf_config or llm_config(cfg, tokenizer), dtype=torch.float32,
                                                 attn_implementation=cfg.attn_implementation)
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    if cfg.lora_rank:
        add_lora(model, cfg)
    return model


def add_lora(model: PreTrainedModel, cfg: LLMConfig) -> None:
    """peft's LoRA layers put in place of the targeted linear layers (each keeps its original as
    `base_layer`), so the adapters are part of the model tree and of its saved weights."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise ImportError("llm.lora_rank needs peft: pip install -e '.[lora]'") from None
    inject_adapter_in_model(LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                       target_modules=cfg.lora_targets), model)


def is_lora(name: str) -> bool:
    """Whether a parameter name is a LoRA adapter's (peft names them lora_A / lora_B ...)."""
    return ".lora_" in name


def parameter_count(hf_config: dict[str, Any]) -> int:
    """Parameters a saved LLM config describes, counted on the meta device: nothing is allocated, so a
    config that would need 5 GB can be refused before it is built."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**hf_config))
    return sum(p.numel() for p in model.parameters())


def decoder_layers(model: PreTrainedModel) -> nn.ModuleList:
    """The stack of decoder blocks, whatever the family calls it (`layers` in Llama/Qwen2, `h` in GPT-2)."""
    decoder = model.get_decoder()
    n_layers = model.config.num_hidden_layers
    stacks = [m for m in decoder.children() if isinstance(m, nn.ModuleList) and len(m) == n_layers]
    if len(stacks) != 1:
        raise ValueError(f"cannot find the {n_layers} decoder layers of {type(model).__name__}")
    return stacks[0]
