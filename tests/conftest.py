import io
import sys

import pytest
import torch
from PIL import Image, ImageDraw

from mmllm.config import AudioConfig, EncoderConfig, LLMConfig, MMLLMConfig

# The helpers the test files share, each given to them by a session-scoped fixture of its name that returns the
# helper itself (`def test_x(tiny_config): tiny_config(arch="nvlm_x")`): test files take them as fixtures, never
# by importing conftest or each other; session scope lets module-scoped fixtures use them too. The helpers are
# private (`_tiny_config`) and each fixture is registered by `name=`, which leaves the plain names free for the
# aliases further down.


def _tiny_config(**overrides) -> MMLLMConfig:
    """The smallest model that exercises every path: tall-patch timm ViT + 2-layer Llama."""
    base = dict(
        encoder=EncoderConfig(feature_layer=-1, options={"embed_dim": 32, "depth": 1, "num_heads": 2, "patch_size": [16, 4]}),
        llm=LLMConfig(options={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                               "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512}),
    )
    base.update(overrides)
    return MMLLMConfig(**base)


@pytest.fixture(scope="session", name="tiny_config")
def tiny_config_fixture():
    """`tiny_config(**overrides)`: the smallest model's config (see `_tiny_config`)."""
    return _tiny_config


@pytest.fixture
def tiny_model(tiny_config):
    """The tiny model, seeded, in eval mode; a fresh one per test (tests may change it)."""
    from mmllm.model import MMLLM

    torch.manual_seed(0)
    return MMLLM(tiny_config()).eval()


def _tiny_module(**kw):
    """The tiny model as the Lightning module that `mmllm fit` trains (SFT, encoder trainable)."""
    from mmllm.train.module import MMLLMModule, ModuleConfig

    cfg = _tiny_config()
    torch.manual_seed(0)
    return MMLLMModule(ModuleConfig(encoder=cfg.encoder, llm=cfg.llm, stage="sft", train_encoder=True, **kw))


@pytest.fixture(scope="session", name="tiny_module")
def tiny_module_fixture():
    """`tiny_module(**kw)`: a fresh tiny Lightning module, seeded (see `_tiny_module`)."""
    return _tiny_module


def _text_image(text: str, size=(128, 32)) -> Image.Image:
    """Black text on a white RGB image of `size`."""
    img = Image.new("RGB", size, "white")
    ImageDraw.Draw(img).text((4, 8), text, fill="black")
    return img


@pytest.fixture(scope="session", name="text_image")
def text_image_fixture():
    """`text_image(text, size=(128, 32))`: an image showing `text`."""
    return _text_image


def _text_bomb_png(path) -> None:
    """A small PNG whose text chunk decompresses past Pillow's limit: its decoder refuses it with a ValueError
    of its own (`Decompressed data too large for PngImagePlugin.MAX_TEXT_CHUNK`)."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * (PngImagePlugin.MAX_TEXT_CHUNK + 1), zip=True)
    _text_image("w").save(path, pnginfo=info)


@pytest.fixture(scope="session", name="text_bomb_png")
def text_bomb_png_fixture():
    """`text_bomb_png(path)`: writes a PNG its decoder refuses (see `_text_bomb_png`)."""
    return _text_bomb_png


def _chat(i: int, answer: str | None = None, **media) -> dict:
    """A text conversation (an `<image>` marker when an image is given): BOS + "User: " + "hi" + the
    assistant prefix (12) + answer + EOS, so 22 + len(answer) tokens with the byte tokenizer."""
    question = "<image>\nhi" if "image" in media else "hi"
    return {"id": f"t{i}", **media, "conversations": [
        {"from": "human", "value": question}, {"from": "gpt", "value": f"a{i}" if answer is None else answer}]}


@pytest.fixture(scope="session", name="chat")
def chat_fixture():
    """`chat(i, answer=None, **media)`: training record `t{i}` (see `_chat`)."""
    return _chat


def _line(row) -> bytes:
    """`row` as one JSON line."""
    import json

    return json.dumps(row).encode() + b"\n"


def _write_jsonl(path, rows) -> str:
    """Writes `rows` to `path` as JSON lines; returns the path as a string."""
    path.write_bytes(b"".join(map(_line, rows)))
    return str(path)


@pytest.fixture(scope="session", name="write_jsonl")
def write_jsonl_fixture():
    """`write_jsonl(path, rows) -> str`: `rows` written as JSON lines (see `_write_jsonl`)."""
    return _write_jsonl


def _tone(seconds: float, rate: int | None = None, hz: float = 440.0):
    """A float32 sine of `hz` at amplitude 0.3, `seconds` long at `rate` (default `mmllm.audio.SAMPLE_RATE`,
    imported here, not at the top: it brings in torchaudio and transformers)."""
    import numpy as np

    from mmllm.audio import SAMPLE_RATE

    rate = SAMPLE_RATE if rate is None else rate
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


@pytest.fixture(scope="session", name="tone")
def tone_fixture():
    """`tone(seconds, rate=SAMPLE_RATE, hz=440.0)`: a sine wave as a float32 array."""
    return _tone


def _bad_audio_files(root) -> dict[str, str]:
    """One file per bad-audio class, with the words its message must contain."""
    import numpy as np
    import soundfile as sf

    from mmllm.audio import SAMPLE_RATE

    sf.write(root / "nan.wav", np.array([0.1, np.nan, 0.2], dtype=np.float32), SAMPLE_RATE, subtype="FLOAT")
    (root / "empty.wav").write_bytes(b"")
    (root / "corrupt.flac").write_bytes(b"fLaC not really a flac stream")
    (root / "clip.m4a").write_bytes(b"\x00\x00\x00\x18ftypM4A ")
    sf.write(root / "silent.wav", np.zeros((0, 1), dtype=np.float32), SAMPLE_RATE)
    return {"missing.wav": "audio not found", "nan.wav": "NaN or infinite samples", "empty.wav": "empty audio file",
            "corrupt.flac": "cannot decode audio", "clip.m4a": "unsupported audio format '.m4a'",
            "silent.wav": "has no samples"}


@pytest.fixture(scope="session", name="bad_audio_files")
def bad_audio_files_fixture():
    """`bad_audio_files(root) -> {name: message}`: writes one bad file per class (see `_bad_audio_files`)."""
    return _bad_audio_files


@pytest.fixture(scope="session")
def audio_config() -> AudioConfig:
    """The tiny Whisper audio tower (4 s window, 4x token stack) of the audio model tests."""
    return AudioConfig(max_seconds=4, factor=4, options={"d_model": 32, "encoder_layers": 1,
                                                         "encoder_attention_heads": 2, "encoder_ffn_dim": 64})


# The plain names that test files not yet on fixtures still import (test_fsdp, test_precision, test_predict_export,
# test_data_scale; the last also through test_data and test_data_faults). Drop each with its last importer.
tiny_config = _tiny_config
tiny_module = _tiny_module
text_image = _text_image
chat = _chat
write = _write_jsonl


@pytest.fixture(scope="session", name="as_terminal")
def as_terminal_fixture():
    """`as_terminal(monkeypatch) -> Terminal`: stderr as a terminal (see `_as_terminal`)."""
    return _as_terminal


class Terminal(io.StringIO):
    """A stderr that says it is a terminal, and keeps what is drawn on it."""

    def isatty(self) -> bool:
        return True


def _as_terminal(monkeypatch) -> Terminal:
    """stderr as a terminal, with progress bars drawn at once (not after `mmllm.progress.DELAY`). Called in the
    test itself: pytest puts its own stderr back between a fixture's setup and the test."""
    from mmllm import progress

    monkeypatch.setattr(progress, "DELAY", 0)
    monkeypatch.setattr(sys, "stderr", Terminal())
    return sys.stderr
