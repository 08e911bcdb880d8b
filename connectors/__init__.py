"""Connectors between encoder features and the LLM. A new projector is one file plus one line here."""
from .mlp import MLPProjector
from .pixel_shuffle import PixelShuffle, pixel_shuffle

PROJECTORS = {"mlp": MLPProjector}

__all__ = ["MLPProjector", "PixelShuffle", "pixel_shuffle", "PROJECTORS"]
