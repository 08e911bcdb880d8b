"""Sequence packing (`--data.pack_to`): samples share rows but not attention or media, so a packed batch's loss
is the same samples' unpacked loss, for D, X and H."""
from dataclasses import replace

import pytest
import torch

from mmllm.model import MMLLM, positions
from mmllm.sample import Sample


def samples(model: MMLLM, text_image) -> list[Sample]:
    proc = model.processor

    def conv(question: str, answer: str) -> list[dict]:
        return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]

    return [
        proc.encode(conv("<image>\nWhat is written?", "hello"), [text_image("hello", (64, 32))]),
        proc.encode(conv("Say seven.", "seven"), []),
        proc.encode(conv("<image>\nRead it.", "a longer line"), [text_image("a longer line", (128, 32))]),
        proc.encode(conv("<image>\nFirst?\n<image>\nSecond?", "ab"), [text_image("a"), text_image("b")]),
    ]


def opened(tiny_config, arch: str) -> MMLLM:
    torch.manual_seed(0)
    model = MMLLM(tiny_config(arch=arch)).eval()
    for block in model.cross_blocks().values():  # open the gates: the images must matter
        block.attn_gate.data.fill_(1.0)
        block.ffn_gate.data.fill_(1.0)
    return model


@pytest.mark.parametrize("arch", ["nvlm_d", "nvlm_x", "nvlm_h"])
def test_a_packed_batch_has_the_loss_of_the_same_samples_unpacked(arch, tiny_config, text_image):
    model = opened(tiny_config, arch)
    batch = samples(model, text_image)
    longest = max(len(s.input_ids) for s in batch)
    packed = model.processor.pack(batch, 2 * longest)
    assert packed.input_ids.shape[0] < len(batch)  # samples do share rows
    with torch.no_grad():
        unpacked_loss = model(model.processor.collate(batch)).loss
        packed_loss = model(packed).loss
        # The control: the same rows with positions running through a row let samples attend to each other.
        leaky = model(replace(packed, position_ids=positions(packed.attention_mask))).loss
    torch.testing.assert_close(packed_loss, unpacked_loss, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(leaky, unpacked_loss, rtol=1e-5, atol=1e-6)  # the test can tell


def test_packing_fills_rows_first_fit_in_order_and_gives_a_long_sample_its_own_row(tiny_config, text_image):
    model = opened(tiny_config, "nvlm_x")
    batch = samples(model, text_image)
    n = [len(s.input_ids) for s in batch]
    packed = model.processor.pack(batch, n[0] + n[1])
    assert packed.input_ids.shape == (3, max(n[0] + n[1], n[2], n[3]))
    assert packed.attention_mask.sum().item() == sum(n)  # every token kept, none twice
    first_row = packed.position_ids[0, -(n[0] + n[1]):]
    assert torch.equal(first_row, torch.cat([torch.arange(n[0]), torch.arange(n[1])]))
    assert len(packed.pixel_values) == sum(len(s.pixel_values) for s in batch)


def test_the_training_collator_packs_when_asked_and_keeps_every_sample_id(tiny_config, text_image):
    from mmllm.train.data import Collator, Loaded, MMDataModule

    model = opened(tiny_config, "nvlm_d")
    batch = [Loaded(s, f"s{i}") for i, s in enumerate(samples(model, text_image))]
    packed, plain = Collator(model.processor, pack_to=10_000)(batch), Collator(model.processor)(batch)
    assert packed.ids == plain.ids == ["s0", "s1", "s2", "s3"]
    assert packed.inputs.input_ids.shape[0] == 1 and plain.inputs.position_ids is None
    assert (packed.inputs.attention_mask == 0).sum() == 0 < (plain.inputs.attention_mask == 0).sum()
    with pytest.raises(ValueError, match="pack_to must be a row length"):
        MMDataModule(pack_to=-1)
