"""`--model.gradient_checkpointing`: the LLM's layers, the encoder's blocks and the cross-attention blocks
recompute their activations in the backward pass, and nothing else changes."""
import pytest
import torch

from mmllm.model import MMLLM
from mmllm.train.fsdp import inner_layer
from mmllm.train.module import MMLLMModule, ModuleConfig


def module(tiny_config, arch: str, checkpointing: bool, stage: str = "sft") -> MMLLMModule:
    cfg = tiny_config()
    torch.manual_seed(0)
    config = ModuleConfig(arch=arch, encoder=cfg.encoder, llm=cfg.llm, stage=stage, train_encoder=stage == "sft",
                          gradient_checkpointing=checkpointing)
    return MMLLMModule(config).train()


def batch(model: MMLLM, text_image):
    conv = [{"from": "human", "value": "<image>\nWhat is written?"}, {"from": "gpt", "value": "hello"}]
    proc = model.processor
    return proc.collate([proc.encode(conv, [text_image("hello", (64, 32))]) for _ in range(2)])


def step(m: MMLLMModule, text_image) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    loss = m.model(batch(m.model, text_image)).loss
    loss.backward()
    # Named as in the state dict: the checkpoint wrapper's own level is not part of a weight's name.
    return loss.detach(), {n.replace("._checkpoint_wrapped_module", ""): p.grad.clone()
                           for n, p in m.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch", ["nvlm_d", "nvlm_x"])
def test_checkpointing_gives_the_same_loss_and_gradients(arch, tiny_config, text_image):
    plain_loss, plain_grads = step(module(tiny_config, arch, False), text_image)
    loss, grads = step(module(tiny_config, arch, True), text_image)
    assert torch.equal(loss, plain_loss) and grads.keys() == plain_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[name], rtol=1e-5, atol=1e-7, msg=name)


def count_calls(blocks: dict[str, torch.nn.Module]) -> dict[str, int]:
    """Counts calls of each module's forward itself (a recompute may skip module hooks)."""
    calls = dict.fromkeys(blocks, 0)
    for name, block in blocks.items():
        def counted(*args, name=name, forward=block.forward, **kwargs):
            calls[name] += 1
            return forward(*args, **kwargs)

        block.forward = counted
    return calls


def test_every_kind_of_block_runs_again_in_the_backward_pass(tiny_config, text_image):
    m = module(tiny_config, "nvlm_x", True)
    layer = next(iter(m.model.cross_layers().values()))
    calls = count_calls({"llm layer": layer.layer.mlp, "cross-attention block": layer.cross.q_proj,
                         "encoder block": m.model.encoder.model.blocks[0]})
    step(m, text_image)
    assert calls == dict.fromkeys(calls, 2)  # once forward, once recomputed for the backward


@pytest.mark.parametrize("arch", ["nvlm_d", "nvlm_x"])
def test_the_frozen_llm_of_stage_1_recomputes_its_layers_too(arch, tiny_config, text_image):
    m = module(tiny_config, arch, True, stage="pretrain")
    assert not m.model.llm.training  # frozen parts stay in eval mode, yet the backward runs through them
    # D's backward runs through every layer to the spliced tokens, X's from its first cross-attention layer on.
    first = min(m.model.cross_layers(), default=0)
    calls = count_calls({f"llm layer {i}": inner_layer(layer).mlp
                         for i, layer in enumerate(m.model.llm.model.layers) if i >= first})
    step(m, text_image)
    assert calls == dict.fromkeys(calls, 2)
