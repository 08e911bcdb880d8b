"""Precision and memory policy for real checkpoints: fp32 master weights whatever the checkpoint's dtype,
the compute dtype set by `--trainer.precision`, and the attention kernel a config choice."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from mmllm.tokenizer import byte_tokenizer
from mmllm.train.module import MMLLMModule, ModuleConfig


LLAMA = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             vocab_size=300, max_position_embeddings=512)


@pytest.fixture(scope="module")
def bf16_llama(tmp_path_factory) -> str:
    """A local Llama checkpoint saved in bf16, as most released checkpoints are."""
    out = tmp_path_factory.mktemp("llama")
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", **LLAMA)).to(torch.bfloat16).save_pretrained(out)
    byte_tokenizer().save_pretrained(out)  # a checkpoint comes with its tokenizer
    return str(out)


def test_a_bf16_checkpoint_loads_as_fp32_master_weights_and_the_table_says_so(bf16_llama, tiny_config):
    cfg = tiny_config()
    module = MMLLMModule(ModuleConfig(encoder=cfg.encoder, llm={"name_or_path": bf16_llama}, stage="sft"))
    assert {p.dtype for p in module.parameters()} == {torch.float32}
    table = module.describe().splitlines()
    assert table[1].split()[-1] == "dtype" and all(row.split()[-1] == "float32" for row in table[2:5])


def test_the_attention_kernel_is_a_config_choice_with_the_same_outputs(tiny_config):
    torch.manual_seed(0)
    cfg = tiny_config()
    eager = MMLLMModule(ModuleConfig(encoder=cfg.encoder, llm={**vars(cfg.llm), "attn_implementation": "eager"})).model.llm
    torch.manual_seed(0)
    sdpa = MMLLMModule(ModuleConfig(encoder=cfg.encoder, llm=cfg.llm)).model.llm
    assert (eager.config._attn_implementation, sdpa.config._attn_implementation) == ("eager", "sdpa")
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    torch.testing.assert_close(eager(input_ids=ids).logits, sdpa(input_ids=ids).logits)


@pytest.mark.slow
@pytest.mark.parametrize("precision,stored", [("bf16-mixed", torch.float32), ("bf16-true", torch.bfloat16)])
def test_bf16_mixed_keeps_fp32_weights_and_bf16_true_trains_bf16_weights(tmp_path, precision, stored, mmllm,
                                                                         tiny_yaml):
    mmllm("data", "synth", "--task", "ocr", "--n", "8", "--out", "d", cwd=tmp_path)
    mmllm("fit", "--config", tiny_yaml, "--data.train", "d/train.jsonl", "--data.batch_size", "4",
          "--trainer.max_steps", "2", "--trainer.precision", precision, "--trainer.default_root_dir", "out",
          cwd=tmp_path)
    state = torch.load(next((tmp_path / "out").rglob("last.ckpt")), map_location="cpu", weights_only=True)
    weights = [v for k, v in state["state_dict"].items() if v.is_floating_point()]
    assert {w.dtype for w in weights} == {stored}
    assert {s["exp_avg"].dtype for s in state["optimizer_states"][0]["state"].values()} == {stored}
