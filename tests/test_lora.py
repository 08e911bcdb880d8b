"""LoRA on the LLM (`--model.llm.lora_rank`): real adapter modules in the tree, the LLM's own weights frozen,
adapters at zero change nothing, and a saved model reloads with its adapters."""
import pytest
import torch

from mmllm.config import LLMConfig
from mmllm.model import MMLLM
from mmllm.train.module import MMLLMModule, ModuleConfig

IDS = torch.tensor([[5, 6, 7, 8, 9]])


def lora_llm(tiny_config, rank: int = 4) -> LLMConfig:
    return LLMConfig(options=tiny_config().llm.options, lora_rank=rank)


def module(tiny_config, stage: str, rank: int = 4) -> MMLLMModule:
    torch.manual_seed(0)
    return MMLLMModule(ModuleConfig(encoder=tiny_config().encoder, llm=lora_llm(tiny_config, rank), stage=stage))


def test_adapters_are_modules_of_the_tree_and_only_they_train_in_the_llm(tiny_config):
    m = module(tiny_config, "sft")
    assert "lora_A" in str(m.model) and "LoRA r=4" in m.describe()
    llm = dict(m.model.llm.named_parameters())
    trainable = {n for n, p in llm.items() if p.requires_grad}
    assert trainable and trainable == {n for n in llm if ".lora_" in n}
    assert all(p.requires_grad for p in m.model.projector.parameters())
    assert not any(p.requires_grad for p in module(tiny_config, "pretrain").model.llm.parameters())


def test_fresh_adapters_leave_the_llm_as_it_was(tiny_config):
    torch.manual_seed(0)
    bare = MMLLM(tiny_config()).eval()
    torch.manual_seed(0)
    adapted = MMLLM(tiny_config(llm=lora_llm(tiny_config))).eval()
    assert torch.equal(adapted.llm(input_ids=IDS).logits, bare.llm(input_ids=IDS).logits)


def test_a_training_step_moves_only_adapters_and_connector_and_the_saved_model_reloads_them(
        tmp_path, tiny_config, text_image):
    m = module(tiny_config, "sft").train()
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    proc = m.model.processor
    conv = [{"from": "human", "value": "<image>\nRead it."}, {"from": "gpt", "value": "hi"}]
    batch = proc.collate([proc.encode(conv, [text_image("hi", (64, 32))])])
    optimizer = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5)
    m.model(batch).loss.backward()
    optimizer.step()
    moved = {n for n, p in m.named_parameters() if not torch.equal(p, before[n])}
    assert any(".lora_B" in n for n in moved)
    assert all(".lora_" in n or not n.startswith("model.llm.") for n in moved)
    m.model.save_pretrained(tmp_path)
    reloaded = MMLLM.from_pretrained(tmp_path)
    m.model.eval()
    assert torch.equal(reloaded.llm(input_ids=IDS).logits, m.model.llm(input_ids=IDS).logits)


@pytest.mark.parametrize("arch", ["nvlm_d", "nvlm_x", "nvlm_h"])
@pytest.mark.parametrize("stage", ["pretrain", "sft"])
def test_lora_changes_only_how_the_llm_trains_the_connector_and_its_cross_attention_train_as_without(
        tiny_config, arch, stage):
    def built(rank: int) -> tuple[MMLLMModule, set[str], set[str]]:
        torch.manual_seed(0)
        llm = lora_llm(tiny_config, rank) if rank else LLMConfig(options=tiny_config().llm.options)
        m = MMLLMModule(ModuleConfig(arch=arch, encoder=tiny_config().encoder, llm=llm, stage=stage))
        names = {id(p): n for n, p in m.named_parameters()}
        return m, {n for n, p in m.named_parameters() if p.requires_grad}, {names[id(p)] for p in m.part_parameters()["llm"]}

    _, bare, bare_llm = built(0)
    adapted_module, adapted, _ = built(4)
    adapters = {n for n in adapted if ".lora_" in n}
    assert adapted - adapters == bare - bare_llm  # the connector (and encoder) as without LoRA, in every stage
    assert bool(adapters) == (stage == "sft")
    if arch != "nvlm_d":  # the gated cross-attention blocks sit in the LLM's layer list, yet are the connector's
        cross = {n for n, p in adapted_module.named_parameters() if n.startswith("model.llm.") and ".lora_" not in n
                 and any(p is q for q in adapted_module.part_parameters()["connector"])}
        assert cross and cross <= adapted
