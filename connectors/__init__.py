"""Connectors between encoder features and the LLM. A new projector is one file plus one line here."""
from .audio import AudioConnector, FramePool, FrameStack
from .cross_attention import GatedCrossAttention
from .mlp import LinearProjector, MLPProjector
from .pixel_shuffle import PixelShuffle, pixel_shuffle

PROJECTORS = {"mlp": MLPProjector, "linear": LinearProjector}
AUDIO_DOWNSAMPLE = {"stack": FrameStack, "pool": FramePool}

__all__ = ["AUDIO_DOWNSAMPLE", "AudioConnector", "FramePool", "FrameStack", "GatedCrossAttention", "LinearProjector",
           "MLPProjector", "PixelShuffle", "pixel_shuffle", "PROJECTORS"]
