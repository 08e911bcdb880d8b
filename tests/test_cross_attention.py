"""NVLM-X and NVLM-H: gated cross-attention on any HF decoder (Llama and Qwen2 families)."""
import pytest
import torch

from mmllm.config import LLMConfig
from mmllm.connectors import GatedCrossAttention
from mmllm.model import MMLLM, positions
from mmllm.tiling import tile_tags
from conftest import text_image, tiny_config

FAMILIES = {
    "llama": LLMConfig(options={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                                "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512}),
    "qwen2": LLMConfig(model_type="qwen2", options={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                                                    "num_attention_heads": 4, "num_key_value_heads": 2,
                                                    "max_position_embeddings": 512}),
}


def build(arch: str, family: str = "llama", **kw) -> MMLLM:
    torch.manual_seed(0)
    return MMLLM(tiny_config(arch=arch, llm=FAMILIES[family], **kw)).eval()


def open_gates(model: MMLLM, value: float = 0.7) -> None:
    with torch.no_grad():
        for block in model.cross.values():
            block.attn_gate.fill_(value)
            block.ffn_gate.fill_(value)


def batch_for(model, questions, images):
    return model.processor.collate([model.processor.encode_prompt(q, ims) for q, ims in zip(questions, images)])


def run(model, batch):
    return model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], layout=batch["layout"]).logits


def bare(model, batch):
    mask = batch["attention_mask"]
    return model.llm(input_ids=batch["input_ids"], attention_mask=mask, position_ids=positions(mask)).logits


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("arch", ["nvlm_x", "nvlm_h"])
def test_gates_start_at_zero_and_text_only_equals_the_bare_llm(arch, family):
    model = build(arch, family)
    assert all(b.attn_gate.item() == 0 and b.ffn_gate.item() == 0 for b in model.cross.values())
    batch = batch_for(model, ["no image in this one", "nor here"], [[], []])
    assert torch.equal(run(model, batch), bare(model, batch))


@pytest.mark.parametrize("family", FAMILIES)
def test_x_with_images_equals_bare_llm_until_a_gate_opens(family):
    model = build("nvlm_x", family)
    batch = batch_for(model, ["What text?", "Read."], [[text_image("ab")], [text_image("cd", (64, 64))]])
    assert torch.equal(run(model, batch), bare(model, batch))  # X's sequence is text + tags only
    open_gates(model)
    assert not torch.allclose(run(model, batch), bare(model, batch))


def test_cross_attention_layers_follow_the_config():
    assert sorted(map(int, build("nvlm_x").cross)) == [0, 1]
    assert list(build("nvlm_x", cross_attention_every=2).cross) == ["0"]
    assert list(build("nvlm_h", cross_attention_layers=[1]).cross) == ["1"]
    assert len(build("nvlm_d").cross) == 0


def test_decoder_length_per_arch_matches_the_formula():
    """128x32 -> 4 tiles + thumbnail (k = 4): D = text + 5 (tokens + tag), H = text + thumbnail, X = text + tags."""
    lengths = {}
    for arch in ("nvlm_d", "nvlm_x", "nvlm_h"):
        model = build(arch)
        proc = model.processor
        sample = proc.encode_prompt("What text?", [text_image("ab")])
        lengths[arch] = len(sample["input_ids"])
        tpt = proc.tokens_per_tile
        tag_len = [len(proc.text_ids(t)) for t in tile_tags("1d", (4, 1), 5)]
        text = len(proc.encode_prompt("\nWhat text?", [])["input_ids"]) + len(proc.text_ids("<Image></Image>"))
    assert lengths["nvlm_d"] == text + 5 * tpt + sum(tag_len)
    assert lengths["nvlm_x"] == text + sum(tag_len)
    assert lengths["nvlm_h"] == text + tpt + tag_len[-1]


def test_x_tag_tokens_see_only_their_tile_and_text_sees_the_whole_image():
    model = build("nvlm_x")
    batch = batch_for(model, ["What text?"], [[text_image("ab")]])
    layout = batch["layout"]
    ctx = model.cross_context(model.image_features(batch["pixel_values"]), layout)
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
    block = model.cross["0"]
    hidden = torch.randn(1, layout.token_tile.shape[1], model.llm.config.hidden_size)
    pixels = batch["pixel_values"].clone()
    pixels[2] = torch.randn_like(pixels[2])
    outs = []
    for p in (batch["pixel_values"], pixels):
        c = model.cross_context(model.image_features(p), layout)
        outs.append(block(hidden, c.kv(0, block), c.prompt))
    moved = (outs[1] - outs[0]).abs().amax(-1)[0] > 1e-6
    token_tile, token_media = layout.token_tile[0], layout.token_media[0]
    assert torch.equal(moved, (token_tile == 2) | ((token_tile < 0) & (token_media >= 0)))


@pytest.mark.parametrize("arch", ["nvlm_x", "nvlm_h"])
def test_text_before_any_image_is_untouched(arch):
    model = build(arch)
    open_gates(model)
    conv = [{"from": "human", "value": "Some words first, then <image> and a question"}]
    sample = model.processor.encode(conv, [text_image("ab")])
    batch = model.processor.collate([sample])
    before = int((batch["layout"].token_media[0] < 0).sum())
    assert before > 10
    assert torch.equal(run(model, batch)[:, :before], bare(model, batch)[:, :before])


def test_two_images_follow_the_most_recent_rule():
    for arch in ("nvlm_x", "nvlm_h"):
        model = build(arch)
        conv = [{"from": "human", "value": "<image> first, <image> second"}]
        sample = model.processor.encode(conv, [text_image("ab", (128, 32)), text_image("cd", (64, 64))])
        batch = model.processor.collate([sample])
        ctx = model.cross_context(model.image_features(batch["pixel_values"]), batch["layout"])
        key_image = torch.tensor([img for kind, payload, img, _ in batch["layout"].kv[0]
                                  for _ in range(model.processor.tokens_per_tile if kind == "tile" else len(payload))])
        token_media = batch["layout"].token_media[0]
        for pos in range(len(token_media)):
            allowed = set(key_image[ctx.prompt[0, pos]].tolist())
            assert allowed <= ({int(token_media[pos])} if token_media[pos] >= 0 else set())
        assert set(key_image[ctx.tail[0]].tolist()) == {1}  # decoding steps see the last image


@pytest.mark.parametrize("arch", ["nvlm_x", "nvlm_h"])
def test_generation_cached_equals_uncached_and_batch_equals_singles(arch):
    model = build(arch)
    open_gates(model)
    questions = ["What text?", "Read the image please.", "no image"]
    images = [[text_image("ab12")], [text_image("hello", (96, 48))], []]
    batch = batch_for(model, questions, images)
    args = (batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["layout"])
    assert torch.equal(model.generate(*args, max_new_tokens=10, use_cache=True),
                       model.generate(*args, max_new_tokens=10, use_cache=False))
    batched = model.answer(questions, images, max_new_tokens=10)
    assert batched == [model.answer([q], [ims], max_new_tokens=10)[0] for q, ims in zip(questions, images)]


@pytest.mark.parametrize("arch", ["nvlm_x", "nvlm_h"])
def test_keys_and_values_are_computed_once_per_image(arch, monkeypatch):
    model = build(arch)
    calls = []
    original = GatedCrossAttention.kv
    monkeypatch.setattr(GatedCrossAttention, "kv", lambda self, image: calls.append(1) or original(self, image))
    out = model.answer(["What text?"], [[text_image("ab12")]], max_new_tokens=8)
    assert len(out) == 1 and len(calls) == len(model.cross)  # once per block, not once per step


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("arch", ["nvlm_x", "nvlm_h"])
def test_save_load_round_trip(arch, family, tmp_path):
    model = build(arch, family)
    open_gates(model, 0.3)
    model.save_pretrained(tmp_path / "m")
    loaded = MMLLM.from_pretrained(tmp_path / "m")
    batch = batch_for(model, ["What text?"], [[text_image("ab12")]])
    assert torch.equal(run(model, batch), run(loaded, batch))


@pytest.mark.parametrize("arch", ["nvlm_x", "nvlm_h"])
def test_text_only_batch_keeps_cross_attention_in_the_graph(arch):
    model = build(arch)
    batch = batch_for(model, ["just text"], [[]])
    model(batch["input_ids"], labels=batch["input_ids"]).loss.backward()
    assert all(p.grad is not None for p in model.cross.parameters())
