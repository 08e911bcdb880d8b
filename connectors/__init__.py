"""Connectors between encoder features and the LLM. A new projector is one file plus one line here."""
from .cross_attention import GatedCrossAttention
from .mlp import LinearProjector, MLPProjector
from .pixel_shuffle import PixelShuffle, pixel_shuffle

PROJECTORS = {"mlp": MLPProjector, "linear": LinearProjector}

__all__ = ["GatedCrossAttention", "LinearProjector", "MLPProjector", "PixelShuffle", "pixel_shuffle", "PROJECTORS"]
