"""NVLM-X and NVLM-H: gated cross-attention on any HF decoder (Llama and Qwen2 families)."""
import copy
from dataclasses import replace

import pytest
import torch
from transformers import DynamicCache

from mmllm.config import LLMConfig, ProcessorConfig
from mmllm.layers import CrossAttentionDecoderLayer
from mmllm.connectors import GatedCrossAttention
from mmllm.model import MMLLM, positions
from mmllm.tiling import tile_tags

FAMILIES = {
    "llama": LLMConfig(options={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                                "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512}),
    "qwen2": LLMConfig(model_type="qwen2", options={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                                                    "num_attention_heads": 4, "num_key_value_heads": 2,
                                                    "max_position_embeddings": 512}),
}


@pytest.fixture
def build(tiny_config):
    """`build(arch, family="llama", **kw)`: the seeded tiny model of `arch` on the LLM of `family`."""

    def make(arch: str, family: str = "llama", **kw) -> MMLLM:
        torch.manual_seed(0)
        return MMLLM(tiny_config(**{"arch": arch, "llm": FAMILIES[family], **kw})).eval()

    return make


def open_gates(model: MMLLM, value: float = 0.7) -> None:
    with torch.no_grad():
        for block in model.cross_blocks().values():
            block.attn_gate.fill_(value)
            block.ffn_gate.fill_(value)


def batch_for(model, questions, images):
    return model.processor.collate([model.processor.encode_prompt(q, ims) for q, ims in zip(questions, images)])


def run(model, batch):
    return model(batch).logits


def bare(model, batch):
    """The LLM alone on the token ids, its cross-attention layers unconditioned."""
    mask = batch.attention_mask
    return model.llm(input_ids=batch.input_ids, attention_mask=mask, position_ids=positions(mask)).logits


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("arch", ["nvlm_x", "nvlm_h"])
def test_gates_start_at_zero_and_text_only_equals_the_bare_llm(arch, family, build):
    model = build(arch, family)
    assert all(b.attn_gate.item() == 0 and b.ffn_gate.item() == 0 for b in model.cross_blocks().values())
    batch = batch_for(model, ["no image in this one", "nor here"], [[], []])
    assert torch.equal(run(model, batch), bare(model, batch))


@pytest.mark.parametrize("family", FAMILIES)
def test_x_with_images_equals_bare_llm_until_a_gate_opens(family, build, text_image):
    model = build("nvlm_x", family)
    batch = batch_for(model, ["What text?", "Read."], [[text_image("ab")], [text_image("cd", (64, 64))]])
    assert torch.equal(run(model, batch), bare(model, batch))  # X's sequence is text + tags only
    open_gates(model)
    assert not torch.allclose(run(model, batch), bare(model, batch))


def test_cross_attention_layers_follow_the_config(build):
    four = LLMConfig(options=dict(FAMILIES["llama"].options, num_hidden_layers=8))
    assert list(build("nvlm_x").cross_layers()) == [1]  # never layer 0 by default: its queries carry no position
    assert list(build("nvlm_x", llm=four).cross_layers()) == [3, 7]  # OpenFlamingo: before layers k-1, 2k-1, ...
    assert list(build("nvlm_x", cross_attention_every=1).cross_layers()) == [0, 1]
    assert list(build("nvlm_h", cross_attention_layers=[0]).cross_layers()) == [0]
    assert build("nvlm_d").cross_layers() == {}


def test_decoder_length_per_arch_matches_the_formula(build, text_image):
    """128x32 -> 4 tiles + thumbnail (k = 4): D = text + 5 (tokens + tag), H = text + thumbnail, X = text + tags."""
    lengths = {}
    for arch in ("nvlm_d", "nvlm_x", "nvlm_h"):
        model = build(arch)
        proc = model.processor
        sample = proc.encode_prompt("What text?", [text_image("ab")])
        lengths[arch] = len(sample.input_ids)
        tpt = proc.tokens_per_tile
        tag_len = [len(proc.text_ids(t)) for t in tile_tags("1d", (4, 1), 5)]
        text = len(proc.encode_prompt("\nWhat text?", []).input_ids) + len(proc.text_ids("<Image></Image>"))
    assert lengths["nvlm_d"] == text + 5 * tpt + sum(tag_len)
    assert lengths["nvlm_x"] == text + sum(tag_len)
    assert lengths["nvlm_h"] == text + tpt + tag_len[-1]


def test_x_tag_tokens_see_only_their_tile_and_text_sees_the_whole_image(build, text_image):
    model = build("nvlm_x")
    batch = batch_for(model, ["What text?"], [[text_image("ab")]])
    layout = batch.layout
    ctx = model.memory(model.image_features(batch.pixel_values), layout)
    tpt = model.processor.tokens_per_tile
    for pos, tile in enumerate(layout.token_tile[0].tolist()):
        row = ctx.prompt[0, pos]
        if tile >= 0:  # a tag token: only its own tile's tokens
            assert row.nonzero().flatten().tolist() == list(range(tile * tpt, (tile + 1) * tpt))
        elif layout.token_media[0, pos] >= 0:
            assert row.all()
        else:
            assert not row.any()
    # Behaviour, not just the mask: through an open block, new pixels in tile 2 change exactly the
    # rows of tile 2's tag tokens and of the text that sees the whole image.
    open_gates(model)
    block = model.cross_blocks()[1]
    hidden = torch.randn(1, layout.token_tile.shape[1], model.llm.config.hidden_size)
    pixels = batch.pixel_values.clone()
    pixels[2] = torch.randn_like(pixels[2])
    outs = []
    for p in (batch.pixel_values, pixels):
        c = model.memory(model.image_features(p), layout)
        outs.append(block(hidden, block.kv(c.values), c.prompt))
    moved = (outs[1] - outs[0]).abs().amax(-1)[0] > 1e-6
    token_tile, token_media = layout.token_tile[0], layout.token_media[0]
    assert torch.equal(moved, (token_tile == 2) | ((token_tile < 0) & (token_media >= 0)))


@pytest.mark.parametrize("arch", ["nvlm_x", "nvlm_h"])
def test_text_before_any_image_is_untouched(arch, build, text_image):
    model = build(arch)
    open_gates(model)
    conv = [{"from": "human", "value": "Some words first, then <image> and a question"}]
    sample = model.processor.encode(conv, [text_image("ab")])
    batch = model.processor.collate([sample])
    before = int((batch.layout.token_media[0] < 0).sum())
    assert before > 10
    assert torch.equal(run(model, batch)[:, :before], bare(model, batch)[:, :before])


def test_two_images_follow_the_most_recent_rule(build, text_image):
    for arch in ("nvlm_x", "nvlm_h"):
        model = build(arch)
        conv = [{"from": "human", "value": "<image> first, <image> second"}]
        sample = model.processor.encode(conv, [text_image("ab", (128, 32)), text_image("cd", (64, 64))])
        batch = model.processor.collate([sample])
        ctx = model.memory(model.image_features(batch.pixel_values), batch.layout)
        key_image = torch.tensor([seg.media for seg in batch.layout.kv[0] for _ in range(model.processor.tokens_per_tile)])
        token_media = batch.layout.token_media[0]
        for pos in range(len(token_media)):
            allowed = set(key_image[ctx.prompt[0, pos]].tolist())
            assert allowed <= ({int(token_media[pos])} if token_media[pos] >= 0 else set())
        assert set(key_image[ctx.tail[0]].tolist()) == {1}  # decoding steps see the last image


@pytest.mark.parametrize("arch", ["nvlm_x", "nvlm_h"])
def test_generation_cached_equals_uncached_and_batch_equals_singles(arch, build, text_image):
    model = build(arch)
    open_gates(model)
    questions = ["What text?", "Read the image please.", "no image"]
    images = [[text_image("ab12")], [text_image("hello", (96, 48))], []]
    batch = batch_for(model, questions, images)
    assert torch.equal(model.generate(batch, max_new_tokens=10, use_cache=True),
                       model.generate(batch, max_new_tokens=10, use_cache=False))
    batched = model.answer(questions, images, max_new_tokens=10)
    assert batched == [model.answer([q], [ims], max_new_tokens=10)[0] for q, ims in zip(questions, images)]


@pytest.mark.parametrize("arch", ["nvlm_x", "nvlm_h"])
def test_keys_and_values_are_computed_once_per_image(arch, monkeypatch, build, text_image):
    model = build(arch)
    calls = []
    original = GatedCrossAttention.kv
    monkeypatch.setattr(GatedCrossAttention, "kv", lambda self, *a: calls.append(1) or original(self, *a))
    out = model.answer(["What text?"], [[text_image("ab12")]], max_new_tokens=8)
    assert len(out) == 1 and len(calls) == len(model.cross_layers())  # once per block, not once per step


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("arch", ["nvlm_x", "nvlm_h"])
def test_save_load_round_trip(arch, family, tmp_path, build, text_image):
    model = build(arch, family)
    open_gates(model, 0.3)
    model.save_pretrained(tmp_path / "m")
    loaded = MMLLM.from_pretrained(tmp_path / "m")
    batch = batch_for(model, ["What text?"], [[text_image("ab12")]])
    assert torch.equal(run(model, batch), run(loaded, batch))


@pytest.mark.parametrize("arch", ["nvlm_x", "nvlm_h"])
def test_text_only_batch_keeps_cross_attention_in_the_graph(arch, build):
    model = build(arch)
    proc = model.processor
    batch = proc.collate([proc.encode([{"from": "human", "value": "just"}, {"from": "gpt", "value": "text"}], [])])
    model(batch).loss.backward()
    assert all(p.grad is not None for block in model.cross_blocks().values() for p in block.parameters())


def swap_tiles(batch, a: int, b: int):
    pixels = batch.pixel_values.clone()
    pixels[[a, b]] = pixels[[b, a]]
    return replace(batch, pixel_values=pixels)


@pytest.mark.parametrize("tile_tag", ["1d", "none"])
@pytest.mark.parametrize("arch", ["nvlm_x", "nvlm_h"])
def test_swapping_two_tiles_changes_the_answer_logits(arch, tile_tag, build, text_image):
    """Each tile is encoded alone with the same ViT positions: only the tile identity in the keys/values
    (the default, a learned embedding per tile slot) tells the cross-attention which tile it reads."""
    model = build(arch, processor=ProcessorConfig(tile_tag=tile_tag))
    open_gates(model, 0.9)
    batch = batch_for(model, ["What text?"], [[text_image("ab12")]])  # 4 tiles + thumbnail
    change = (run(model, swap_tiles(batch, 0, 2)) - run(model, batch)).abs().amax()
    assert change > 1e-4


@pytest.mark.parametrize("arch", ["nvlm_x", "nvlm_h"])
def test_tags_as_separate_entries_cannot_tell_tiles_apart(arch, build, text_image):
    """The paper's wording read literally (tags as extra keys/values) binds nothing: a set of keys has no
    order, so swapping two tiles changes nothing. Kept as an ablation (`tile_identity: tag_entries`);
    the bound form (`tag`) does tell them apart."""
    changes = {}
    for identity in ("tag_entries", "tag", "none"):
        model = build(arch, tile_identity=identity, tags_own_tile=False)  # tags only in the keys/values
        open_gates(model, 0.9)
        batch = batch_for(model, ["What text?"], [[text_image("ab12")]])
        changes[identity] = (run(model, swap_tiles(batch, 0, 2)) - run(model, batch)).abs().amax().item()
    assert changes["tag_entries"] < 1e-5 and changes["none"] < 1e-5
    assert changes["tag"] > 1e-4


@pytest.mark.parametrize("arch", ["nvlm_x", "nvlm_h"])
def test_a_deep_copy_keeps_its_cross_attention(arch, build, text_image):
    """EMA and teacher copies: the copy must run its own blocks, not silently fall back to the bare LLM."""
    model = build(arch)
    open_gates(model)
    batch = batch_for(model, ["What text?"], [[text_image("ab12")]])
    twin = copy.deepcopy(model)
    assert torch.equal(run(twin, batch), run(model, batch))
    assert not torch.allclose(run(twin, batch), bare(twin, batch))
    with torch.no_grad():  # and they are its own: changing the copy leaves the original alone
        next(iter(twin.cross_blocks().values())).attn_gate.fill_(0.0)
    assert not torch.equal(run(twin, batch), run(model, batch))


def test_cross_attention_layers_are_visible_in_the_model_tree(build):
    model = build("nvlm_x")
    layers = model.llm.model.layers
    assert isinstance(layers[1], CrossAttentionDecoderLayer) and not isinstance(layers[0], CrossAttentionDecoderLayer)
    keys = model.state_dict().keys()
    assert "llm.model.layers.1.cross.attn_gate" in keys and "llm.model.layers.1.layer.self_attn.q_proj.weight" in keys
    assert "CrossAttentionDecoderLayer" in repr(model)
    assert all(layer.memory is None for layer in model.cross_layers().values())  # nothing left over after a call


@pytest.mark.parametrize("arch", ["nvlm_d", "nvlm_x", "nvlm_h"])
def test_generate_never_emits_the_placeholder_token(arch, build, text_image):
    model = build(arch)
    open_gates(model)
    with torch.no_grad():  # make the placeholder the model's favourite token
        model.llm.lm_head.weight[model.image_token_id] = 10 * model.llm.lm_head.weight.abs().max()
    batch = batch_for(model, ["What text?"], [[text_image("ab12")]])
    out = model.generate(batch, max_new_tokens=6)
    assert out.numel() and not (out == model.image_token_id).any()


def test_input_positions_keep_cached_generation_exact(build, text_image):
    model = build("nvlm_x", input_positions=128)
    open_gates(model)
    batch = batch_for(model, ["What text?", "Read it please."], [[text_image("ab12")], [text_image("cd", (64, 64))]])
    assert torch.equal(model.generate(batch, max_new_tokens=8, use_cache=True),
                       model.generate(batch, max_new_tokens=8, use_cache=False))
    assert not torch.allclose(run(model, batch), run(build("nvlm_x"), batch))  # the positions are in the input


@pytest.mark.parametrize("arch", ["nvlm_x", "nvlm_h"])
def test_rope_cross_attention_keeps_the_equivalences(arch, build, text_image):
    """Gates at 0 => the model without the blocks; cached generation => uncached; a batch => its singles."""
    model = build(arch, cross_attention_positions="rope")
    questions, images = ["What text?", "Read it please."], [[text_image("ab12")], [text_image("cd", (64, 64))]]
    batch = batch_for(model, questions, images)
    assert torch.equal(run(model, batch), run(build(arch), batch))
    open_gates(model)
    assert torch.equal(model.generate(batch, max_new_tokens=8, use_cache=True),
                       model.generate(batch, max_new_tokens=8, use_cache=False))
    assert model.answer(questions, images, max_new_tokens=8) == [
        model.answer([q], [i], max_new_tokens=8)[0] for q, i in zip(questions, images)]


def test_rope_key_positions_count_from_the_image_in_the_sequence(build, text_image):
    model = build("nvlm_x", cross_attention_positions="rope", processor=ProcessorConfig(tile_tag="none"))
    conv = [{"from": "human", "value": "Some words <image> and <image>"}]
    sample = model.processor.encode(conv, [text_image("ab", (64, 32)), text_image("cd", (64, 32))])
    batch = model.processor.collate([sample])
    memory = model.memory(list(model.image_features(batch.pixel_values)), batch.layout)
    image_starts = [i for i, t in enumerate(sample.input_ids) if t == model.processor.text_ids("<Image>")[0]]
    n = 3 * model.processor.tokens_per_tile  # 2 tiles + thumbnail per image
    expected = [image_starts[0] + j for j in range(n)] + [image_starts[1] + j for j in range(n)]
    assert memory.key_positions[0].tolist() == expected


@pytest.mark.parametrize("arch", ["nvlm_d", "nvlm_x", "nvlm_h"])
def test_beam_search_of_a_batch_equals_beam_search_of_each_prompt_alone(arch, tiny_config, text_image):
    """Each beam and each returned sequence reads its own prompt's media (the memory is repeated per copy)."""
    torch.manual_seed(0)
    model = MMLLM(tiny_config(arch=arch)).eval()
    for block in model.cross_blocks().values():  # open the gates, so the images matter
        block.attn_gate.data.fill_(1.0)
        block.ffn_gate.data.fill_(1.0)
    proc = model.processor
    prompts = [proc.encode_prompt("What is written?", [text_image("hello", (64, 32))]),
               proc.encode_prompt("Read the line, please.", [text_image("a longer line", (128, 32))])]
    settings = dict(num_beams=3, num_return_sequences=2, max_new_tokens=5)
    batched = model.generate(proc.collate(prompts), **settings)
    alone = [model.generate(proc.collate([p]), **settings) for p in prompts]
    for k, single in enumerate(alone):
        rows = batched[2 * k: 2 * k + 2, : single.shape[1]]
        assert torch.equal(rows, single), (k, rows, single)
    sampled = model.generate(proc.collate(prompts), do_sample=True, num_return_sequences=2, max_new_tokens=3)
    assert sampled.shape[0] == 4  # sampling expands each prompt to its returned sequences


@pytest.mark.parametrize("arch", ["nvlm_x", "nvlm_h"])
def test_a_prompt_fed_through_the_cache_in_chunks_equals_one_pass(arch, build, text_image):
    """A layer reads which positions a call holds from the KV cache, not from the call's length: a prompt
    prefilled in two chunks gets the prompt's mask rows (text before the image sees nothing) as in one pass."""
    model = build(arch)
    open_gates(model)
    batch = batch_for(model, ["Read the image please."], [[text_image("hello", (96, 48))]])
    mask, length = batch.attention_mask, batch.input_ids.shape[1]
    split = length // 3
    with torch.no_grad(), model.conditioned(batch) as embeds:
        whole = model.llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions(mask)).logits
        cache, chunks = DynamicCache(config=model.llm.config), []
        for a, b in ((0, split), (split, length)):
            chunks.append(model.llm(inputs_embeds=embeds[:, a:b], attention_mask=mask[:, :b], use_cache=True,
                                    position_ids=positions(mask)[:, a:b], cache=cache).logits)
    assert (batch.layout.token_media[0, :split] < 0).any()  # the first chunk holds text before the image
    torch.testing.assert_close(torch.cat(chunks, 1), whole, atol=1e-5, rtol=1e-5)
