"""Audio input: loading any WAV/FLAC to mono 16 kHz, Whisper log-mel features, the real-length mask,
bad files, synthetic ASR data and ASR scoring."""
import json

import numpy as np
import pytest
import soundfile as sf
import torch

from mmllm.audio import SAMPLE_RATE, AudioFrontEnd, load_audio
from mmllm.config import AudioConfig
from mmllm.encoders import build_audio_encoder
from mmllm.eval.runner import score_predictions
from mmllm.model import MMLLM
from mmllm.sample import SampleError
from mmllm.train import synth

TINY_WHISPER = {"d_model": 32, "encoder_layers": 1, "encoder_attention_heads": 2, "encoder_ffn_dim": 64}


def peak_hz(wave: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(wave))
    return float(np.fft.rfftfreq(len(wave), 1 / SAMPLE_RATE)[spectrum.argmax()])


@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_features_and_encoder_states_have_whisper_shapes(n_mels, tone):
    front = AudioFrontEnd(n_mels, 30, lambda frames: frames)
    values, frames, note = front.features(tone(2.0))
    assert values.shape == (n_mels, 3000) and frames == 200 and note is None
    encoder = build_audio_encoder(AudioConfig(n_mels=n_mels, options=TINY_WHISPER))
    assert encoder(values[None]).shape == (1, 1500, 32)  # 50 states per second of the 30 s window
    with pytest.raises(ValueError, match=f"features \\[B, {n_mels}, 3000\\]"):
        encoder(values[None, :, :400])


def test_padding_adds_no_tokens_2s_and_20s_clips_in_a_30s_window(tiny_config, tone):
    torch.manual_seed(0)
    model = MMLLM(tiny_config(audio=AudioConfig(options=TINY_WHISPER))).eval()  # 30 s window, stack 5
    proc = model.processor
    short, long = tone(2.0), tone(20.0, hz=300.0)
    samples = [proc.encode_prompt("Transcribe.", [], [clip]) for clip in (short, long)]
    # 2 s = 200 frames -> 100 states -> 20 tokens; 20 s -> 200 tokens; a full window would give 300.
    placeholders = [s.input_ids.count(proc.image_token_id) for s in samples]
    assert placeholders == [20, 200] and [s.audio_frames for s in samples] == [[200], [2000]]
    batch = proc.collate(samples)
    with torch.no_grad():
        tokens = model.audio_features(batch.audio_values, batch.layout.audio_frames)
        alone = model.audio_features(samples[0].audio_values, torch.tensor([200]))
        full = model.audio_connector(model.audio_encoder(batch.audio_values))
    assert [len(t) for t in tokens] == [20, 200] and full.shape[1] == 300
    assert torch.equal(tokens[0], alone[0]) and torch.equal(tokens[0], full[0, :20])


@pytest.mark.parametrize("fmt", ["WAV", "FLAC"])
@pytest.mark.parametrize("rate", [8000, 44100])
def test_any_rate_and_channel_count_loads_as_mono_16khz(fmt, rate, tmp_path, tone):
    left, right = tone(1.0, rate, 440.0), 0.5 * tone(1.0, rate, 440.0)
    path = tmp_path / f"clip.{fmt.lower()}"
    sf.write(path, np.stack([left, right], axis=1), rate, format=fmt, subtype="PCM_16")
    wave = load_audio(path)
    assert wave.dtype == np.float32 and wave.ndim == 1 and len(wave) == SAMPLE_RATE
    assert abs(peak_hz(wave) - 440.0) <= 1.0
    middle = slice(SAMPLE_RATE // 4, 3 * SAMPLE_RATE // 4)  # away from resampling edge effects
    np.testing.assert_allclose(np.abs(wave[middle]).max(), 0.75 * 0.3, rtol=0.02)  # the channel mean


def test_each_bad_audio_file_has_its_own_message(tmp_path, bad_audio_files):
    for name, message in bad_audio_files(tmp_path).items():
        with pytest.raises(SampleError, match=message):
            load_audio(tmp_path / name)


def test_a_clip_longer_than_the_window_is_truncated_with_a_note(tone):
    front = AudioFrontEnd(80, 4, lambda frames: frames)
    values, frames, note = front.features(tone(6.5))
    assert values.shape == (80, 400) and frames == 400
    assert note == "audio clip of 6.5 s truncated to the 4 s window"


def tree(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_synth_asr_is_deterministic_and_writes_both_formats(tmp_path):
    summary = synth.synthesize("asr", tmp_path / "a", 6, seed=5)
    synth.synthesize("asr", tmp_path / "b", 6, seed=5)
    synth.synthesize("asr", tmp_path / "c", 6, seed=6)
    assert tree(tmp_path / "a") == tree(tmp_path / "b") and tree(tmp_path / "a") != tree(tmp_path / "c")
    assert summary["counts"] == {"type": {"asr": 6}}
    record = json.loads((tmp_path / "a" / "train.jsonl").read_text().splitlines()[0])
    item = json.loads((tmp_path / "a" / "items.jsonl").read_text().splitlines()[0])
    assert record["conversations"][0]["value"] == "<audio>\nTranscribe the audio." and "image" not in record
    words = record["conversations"][1]["value"].split()
    assert 3 <= len(words) <= 5 and set(words) <= set(synth.ASR_WORDS) and item["answers"] == [" ".join(words)]
    wave = load_audio(tmp_path / "a" / item["audio"])
    assert 0.5 < len(wave) / SAMPLE_RATE < 2.5  # fits the 4 s window of configs/asr_tiny.yaml


def test_espeak_voice_says_how_to_install_it_when_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(synth.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="apt-get install espeak-ng"):
        synth.synthesize("asr", tmp_path, 1, voice="espeak")
    with pytest.raises(ValueError, match="only the asr task has a voice"):
        synth.synthesize("ocr", tmp_path, 1, voice="espeak")


def test_asr_is_scored_with_corpus_wer_and_cer(tmp_path):
    rows = [{"id": "a", "prediction": "one two three", "answers": ["one two three"]},
            {"id": "b", "prediction": "four", "answers": ["four five"]}]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = score_predictions("asr", tmp_path / "p.jsonl", tmp_path / "out")
    assert summary["metric"] == "wer" and summary["score"] == summary["corpus_wer"] == pytest.approx(1 / 5)
    assert summary["mean_item_wer"] == pytest.approx(0.25)
    assert summary["corpus_cer"] == pytest.approx(5 / 22)  # 5 deletions over 13 + 9 characters


def test_a_local_pretrained_whisper_loads_with_a_shorter_window_and_round_trips(tmp_path, tiny_config, tone):
    from transformers import WhisperConfig, WhisperModel

    torch.manual_seed(0)
    small = dict(vocab_size=64, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
                 encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                 encoder_ffn_dim=64, decoder_ffn_dim=64, d_model=32, max_target_positions=16)
    hf = WhisperModel(WhisperConfig(**small)).eval()
    hf.save_pretrained(tmp_path / "whisper")
    model = MMLLM(tiny_config(audio=AudioConfig(pretrained=str(tmp_path / "whisper"), max_seconds=4))).eval()
    assert model.config.audio.options["d_model"] == 32  # the loaded architecture, written back for offline rebuilds
    ours = model.audio_encoder.model
    assert torch.equal(ours.layers[0].fc1.weight, hf.encoder.layers[0].fc1.weight)
    assert torch.equal(ours.embed_positions.weight, hf.encoder.embed_positions.weight[:200])  # 4 s of the 30 s table
    features = model.processor.encode_prompt("Transcribe.", [], [tone(1.0)]).audio_values
    model.save_pretrained(tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(MMLLM.from_pretrained(tmp_path / "m").audio_encoder(features), model.audio_encoder(features))


def test_whisper_gradient_checkpointing_recomputes_its_layers_and_changes_no_gradient():
    cfg = AudioConfig(max_seconds=4, options=TINY_WHISPER)
    torch.manual_seed(0)
    plain = build_audio_encoder(cfg).train()
    torch.manual_seed(0)
    ckpt = build_audio_encoder(cfg).train()
    ckpt.set_gradient_checkpointing(True)
    attention = ckpt.model.layers[0].self_attn
    calls, forward = [], attention.forward
    attention.forward = lambda *a, **k: calls.append(1) or forward(*a, **k)
    features = torch.randn(1, cfg.n_mels, ckpt.n_frames)
    plain(features).square().sum().backward()
    ckpt(features).square().sum().backward()
    assert len(calls) == 2
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        if p.requires_grad:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-6, msg=name)
