"""Vision and audio encoders: the first step of the data flow, importing no other mmllm folder.

`config.py` holds what an encoder is built from (read by `import mmllm`, standard library only); `registry.py`
maps family names to builders (a new family is one file plus one line there). The registry's names are
loaded on first use: the towers import torch, timm, open_clip and transformers, which take seconds.
"""
from __future__ import annotations

from typing import Any

_REGISTRY_NAMES = ("AUDIO_ENCODERS", "ENCODERS", "AudioEncoder", "TowerShape", "VisionEncoder", "audio_stride",
                   "build_audio_encoder", "build_encoder", "tower_shape")


def __getattr__(name: str) -> Any:
    if name in _REGISTRY_NAMES:
        from . import registry

        return getattr(registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_REGISTRY_NAMES)
