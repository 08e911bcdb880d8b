import io
import sys

import pytest
import torch
from PIL import Image, ImageDraw

from mmllm.config import EncoderConfig, LLMConfig, MMLLMConfig


def tiny_config(**overrides) -> MMLLMConfig:
    """The smallest model that exercises every path: tall-patch timm ViT + 2-layer Llama."""
    base = dict(
        encoder=EncoderConfig(feature_layer=-1, options={"embed_dim": 32, "depth": 1, "num_heads": 2, "patch_size": [16, 4]}),
        llm=LLMConfig(options={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                               "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512}),
    )
    base.update(overrides)
    return MMLLMConfig(**base)


@pytest.fixture
def tiny_model():
    from mmllm.model import MMLLM

    torch.manual_seed(0)
    return MMLLM(tiny_config()).eval()


def tiny_module(**kw):
    """The tiny model as the Lightning module that `mmllm fit` trains (SFT, encoder trainable)."""
    from mmllm.train.module import MMLLMModule, ModuleConfig

    cfg = tiny_config()
    torch.manual_seed(0)
    return MMLLMModule(ModuleConfig(encoder=cfg.encoder, llm=cfg.llm, stage="sft", train_encoder=True, **kw))


def text_image(text: str, size=(128, 32)) -> Image.Image:
    img = Image.new("RGB", size, "white")
    ImageDraw.Draw(img).text((4, 8), text, fill="black")
    return img


def text_bomb_png(path) -> None:
    """A small PNG whose text chunk decompresses past Pillow's limit: its decoder refuses it with a ValueError
    of its own (`Decompressed data too large for PngImagePlugin.MAX_TEXT_CHUNK`)."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * (PngImagePlugin.MAX_TEXT_CHUNK + 1), zip=True)
    text_image("w").save(path, pnginfo=info)


class Terminal(io.StringIO):
    """A stderr that says it is a terminal, and keeps what is drawn on it."""

    def isatty(self) -> bool:
        return True


def as_terminal(monkeypatch) -> Terminal:
    """stderr as a terminal, with progress bars drawn at once (not after `mmllm.progress.DELAY`). Called in the
    test itself: pytest puts its own stderr back between a fixture's setup and the test."""
    from mmllm import progress

    monkeypatch.setattr(progress, "DELAY", 0)
    monkeypatch.setattr(sys, "stderr", Terminal())
    return sys.stderr
