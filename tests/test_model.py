from dataclasses import replace

import pytest
import torch

from mmllm.model import MMLLM, positions
from mmllm.processor import IGNORE_INDEX


def prompt_batch(model, questions, images):
    return model.processor.collate([model.processor.encode_prompt(q, ims) for q, ims in zip(questions, images)])


def test_text_only_equals_bare_llm(tiny_model):
    batch = prompt_batch(tiny_model, ["hello there, no image here"], [[]])
    ours = tiny_model(batch).logits
    mask = batch.attention_mask
    bare = tiny_model.llm(input_ids=batch.input_ids, attention_mask=mask, position_ids=positions(mask)).logits
    assert torch.equal(ours, bare)


def test_image_layout_and_labels(tiny_model, text_image):
    proc = tiny_model.processor
    conv = [{"from": "human", "value": "<image>\nWhat text?"}, {"from": "gpt", "value": "abc"}]
    sample = proc.encode(conv, [text_image("abc")])
    n_tiles = sample.tiles_per_image[0]
    assert n_tiles == 5  # 128x32 -> 4x1 grid + thumbnail
    ids = torch.tensor(sample.input_ids)
    assert int((ids == proc.image_token_id).sum()) == n_tiles * proc.tokens_per_tile
    text = proc.tokenizer.decode(sample.input_ids, skip_special_tokens=True)
    assert "<Image><tile_1><tile_2><tile_3><tile_4><tile_global_thumbnail></Image>" in text
    labels = [t for t in sample.labels if t != IGNORE_INDEX]
    assert labels == proc.text_ids("abc") + [proc.tokenizer.eos_token_id]


def test_loss_ignores_image_positions_and_backpropagates_to_every_part(tiny_model, text_image):
    proc = tiny_model.processor
    conv = [{"from": "human", "value": "<image>\nWhat text?"}, {"from": "gpt", "value": "abc"}]
    batch = proc.collate([proc.encode(conv, [text_image("abc")])])
    out = tiny_model(batch)
    out.loss.backward()
    for part in (tiny_model.encoder, tiny_model.projector, tiny_model.llm):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())


def test_placeholder_count_mismatch_is_a_clear_error(tiny_model, text_image):
    proc = tiny_model.processor
    batch = prompt_batch(tiny_model, ["What text?"], [[text_image("abc")]])
    with pytest.raises(ValueError, match="placeholder tokens but"):
        tiny_model(replace(batch, pixel_values=batch.pixel_values[:3]))
    with pytest.raises(ValueError, match="no pixel_values"):
        tiny_model(replace(batch, pixel_values=batch.pixel_values[:0]))
    with pytest.raises(ValueError, match="marker"):
        proc.encode([{"from": "human", "value": "two <image> <image>"}], [text_image("a")])


def test_text_only_batch_keeps_trainable_parameters_in_graph(tiny_model):
    proc = tiny_model.processor
    batch = proc.collate([proc.encode([{"from": "human", "value": "just"}, {"from": "gpt", "value": "text"}], [])])
    tiny_model(batch).loss.backward()
    assert all(p.grad is not None for p in tiny_model.projector.parameters())


def test_cached_generation_equals_uncached(tiny_model, text_image):
    batch = prompt_batch(tiny_model, ["What text?", "Read it."], [[text_image("ab12")], [text_image("zz", (64, 64))]])
    cached = tiny_model.generate(batch, max_new_tokens=12, use_cache=True)
    uncached = tiny_model.generate(batch, max_new_tokens=12, use_cache=False)
    assert torch.equal(cached, uncached)


def test_batch_of_four_equals_four_single_runs(tiny_model, text_image):
    questions = ["What text?", "Read the image please.", "?", "Text in image, exactly:"]
    images = [[text_image("ab12")], [text_image("hello", (96, 48))], [text_image("x", (32, 64))], []]
    batched = tiny_model.answer(questions, images, max_new_tokens=10)
    singles = [tiny_model.answer([q], [ims], max_new_tokens=10)[0] for q, ims in zip(questions, images)]
    assert batched == singles


def test_sampling_is_seeded(tiny_model, text_image):
    q, ims = ["What text?"], [[text_image("ab")]]
    torch.manual_seed(1)
    a = tiny_model.answer(q, ims, max_new_tokens=8, do_sample=True, temperature=1.0, top_k=50)
    torch.manual_seed(1)
    b = tiny_model.answer(q, ims, max_new_tokens=8, do_sample=True, temperature=1.0, top_k=50)
    assert a == b


def test_save_pretrained_round_trip(tiny_model, tmp_path, text_image):
    tiny_model.save_pretrained(tmp_path / "m")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in (tmp_path / "m").iterdir()}
    loaded = MMLLM.from_pretrained(tmp_path / "m")
    batch = prompt_batch(tiny_model, ["What text?"], [[text_image("ab12")]])
    assert torch.equal(tiny_model(batch).logits, loaded(batch).logits)


def test_unknown_arch_lists_valid_values():
    from mmllm.config import ConfigError, MMLLMConfig

    with pytest.raises(ConfigError, match="valid values: nvlm_d"):
        MMLLMConfig(arch="nvlm_q")
