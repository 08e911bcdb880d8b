"""Audio in NVLM-D, -X and -H: the sequence layout, gates, the most-recent-media mask with images and
clips together, cached generation and save/load."""
import numpy as np
import pytest
import torch

from mmllm.model import MMLLM, positions
from mmllm.sample import SampleError

ARCHS = ("nvlm_d", "nvlm_x", "nvlm_h")


@pytest.fixture
def build(tiny_config, audio_config):
    """`build(arch)`: the seeded tiny model of `arch` with the tiny audio tower."""

    def make(arch: str) -> MMLLM:
        torch.manual_seed(0)
        return MMLLM(tiny_config(arch=arch, audio=audio_config)).eval()

    return make


def open_gates(model: MMLLM, value: float = 0.7) -> None:
    with torch.no_grad():
        for block in model.cross_blocks().values():
            block.attn_gate.fill_(value)
            block.ffn_gate.fill_(value)


def clip(seconds: float, hz: float) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def run(model, batch):
    return model(batch).logits


def bare(model, batch):
    mask = batch.attention_mask
    return model.llm(input_ids=batch.input_ids, attention_mask=mask, position_ids=positions(mask)).logits


@pytest.fixture
def mixed(text_image):
    """`mixed(model, text=...)`: `text` with an image and a 1.5 s clip, encoded, and as a batch of one."""

    def encode(model, text="<image> look, then <audio> listen: what?"):
        sample = model.processor.encode([{"from": "human", "value": text}], [text_image("ab")],
                                        audio=[clip(1.5, 500)])
        return sample, model.processor.collate([sample])

    return encode


def test_d_splices_the_clip_between_audio_tags_and_checks_the_count(build):
    model = build("nvlm_d")
    proc = model.processor
    sample = proc.encode_prompt("Transcribe.", [], [clip(1.5, 500)])
    n_tokens = model.audio_tokens(150)  # 150 frames -> 75 states -> 19 tokens
    assert n_tokens == 19 and sample.input_ids.count(proc.image_token_id) == n_tokens
    text = proc.tokenizer.decode(sample.input_ids, skip_special_tokens=True)
    assert "<Audio></Audio>" in text and "Transcribe." in text
    batch = proc.collate([sample])
    layout = batch.layout
    layout.audio_frames = layout.audio_frames - 8  # 142 frames -> 18 tokens for 19 placeholders
    with pytest.raises(ValueError, match="19 placeholder tokens but the tiles and clips give 18 embeddings"):
        model(batch)
    with pytest.raises(SampleError, match=r"1 <audio> marker\(s\) in the text but 2 audio clip"):
        proc.encode([{"from": "human", "value": "<audio> hi"}], [], audio=[clip(1, 500), clip(1, 600)])


def test_d_fills_placeholders_in_order_of_appearance(build, mixed):
    model = build("nvlm_d")
    sample, batch = mixed(model, "<audio> first, then <image>")
    with torch.no_grad():
        with model.conditioned(batch) as embeds:
            pass
        audio = model.audio_features(batch.audio_values, batch.layout.audio_frames)[0]
        tiles = model.image_features(batch.pixel_values).flatten(0, 1)
    slots = embeds[0][batch.input_ids[0] == model.image_token_id]
    assert torch.equal(slots, torch.cat([audio, tiles]))


@pytest.mark.parametrize("arch", ["nvlm_x", "nvlm_h"])
def test_x_and_h_keep_audio_out_of_the_sequence_and_equal_the_bare_llm_at_gate_zero(arch, build):
    model = build(arch)
    sample = model.processor.encode_prompt("Transcribe.", [], [clip(1.5, 500)])
    assert model.processor.image_token_id not in sample.input_ids  # only <Audio></Audio> is in the sequence
    batch = model.processor.collate([sample, model.processor.encode_prompt("no audio", [])])
    assert torch.equal(run(model, batch), bare(model, batch))
    open_gates(model)
    assert not torch.allclose(run(model, batch), bare(model, batch))


@pytest.mark.parametrize("arch", ["nvlm_x", "nvlm_h"])
@pytest.mark.parametrize("text", ["Before any media, <image> look, then <audio> listen", "Words <audio> then <image> end"])
def test_image_and_audio_follow_the_most_recent_media_rule(arch, text, build, mixed):
    model = build(arch)
    sample, batch = mixed(model, text)
    layout = batch.layout
    with torch.no_grad():
        segments = list(model.image_features(batch.pixel_values))
        segments += model.audio_features(batch.audio_values, layout.audio_frames)
    ctx = model.memory(segments, layout)
    key_media = torch.tensor([seg.media for seg in layout.kv[0] for _ in range(len(segments[seg.index]))])
    audio_media = next(seg.media for seg in layout.kv[0] if seg.kind == "audio")
    token_media = layout.token_media[0]
    for pos, media in enumerate(token_media.tolist()):
        seen = set(key_media[ctx.prompt[0, pos]].tolist())
        assert seen == ({media} if media >= 0 else set()) or layout.token_tile[0, pos] >= 0
    assert set(key_media[ctx.tail[0]].tolist()) == {int(token_media.max())}  # decoding sees the last media item
    assert {0, 1} == set(token_media.tolist()) - {-1}
    assert audio_media == (1 if text.index("<image>") < text.index("<audio>") else 0)  # media count in order
    # Behaviour: text before any media is untouched with open gates.
    open_gates(model)
    before = int((token_media < 0).sum())
    assert before > 5 and torch.equal(run(model, batch)[:, :before], bare(model, batch)[:, :before])


@pytest.mark.parametrize("arch", ARCHS)
def test_cached_generation_equals_uncached_and_batch_equals_singles_with_audio(arch, build, text_image):
    model = build(arch)
    open_gates(model)
    questions = ["Transcribe.", "<image> and <audio>?", "no media"]
    images = [[], [text_image("ab")], []]
    audio = [[clip(1.0, 400)], [clip(2.5, 700)], []]
    batch = model.processor.collate([model.processor.encode_prompt(q, i, a) for q, i, a in zip(questions, images, audio)])
    cached = model.generate(batch, max_new_tokens=8, use_cache=True)
    uncached = model.generate(batch, max_new_tokens=8, use_cache=False)
    assert torch.equal(cached, uncached)
    batched = model.answer(questions, images, max_new_tokens=8, audio=audio)
    assert batched == [model.answer([q], [i], max_new_tokens=8, audio=[a])[0] for q, i, a in zip(questions, images, audio)]


@pytest.mark.parametrize("arch", ["nvlm_d", "nvlm_h"])
def test_save_load_round_trip_with_audio(arch, tmp_path, build, mixed):
    model = build(arch)
    open_gates(model, 0.3)
    model.save_pretrained(tmp_path / "m")
    loaded = MMLLM.from_pretrained(tmp_path / "m")
    assert loaded.config.audio == model.config.audio
    _, batch = mixed(model)
    assert torch.equal(run(model, batch), run(loaded, batch))


def test_batches_without_audio_keep_the_audio_parts_in_the_graph(build, text_image):
    model = build("nvlm_x")
    batch = model.processor.collate([model.processor.encode_prompt("What text?", [text_image("ab")])])
    run(model, batch).sum().backward()
    assert all(p.grad is not None for p in [*model.audio_encoder.parameters(), *model.audio_connector.parameters()]
               if p.requires_grad)
