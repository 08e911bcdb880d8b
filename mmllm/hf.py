"""What transformers sees of a model: its config class (autoregister.py registers it and the model with the Auto
classes; no remote code)."""
from __future__ import annotations

from dataclasses import fields
from typing import Any

from transformers import PreTrainedConfig

from .config import ConfigError, MMLLMConfig

MMLLM_FIELDS = frozenset(f.name for f in fields(MMLLMConfig))


class MMLLMHFConfig(PreTrainedConfig):
    """config.json of a saved model: our `MMLLMConfig` (the one description of a model, which the CLI fills)
    under "mmllm" and the LLM's exact config under "llm_config", so a folder rebuilds offline.

    The MMLLMConfig's fields read through (`config.processor.max_tiles`), as on the dataclass itself.
    """

    model_type = "mmllm"
    mmllm: MMLLMConfig | dict | None = None
    llm_config: dict | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        if not isinstance(self.mmllm, MMLLMConfig):  # read from config.json
            self.mmllm = MMLLMConfig.from_dict({} if self.mmllm is None else self.mmllm, where="mmllm")
        self.llm_config = {} if self.llm_config is None else self.llm_config
        if not isinstance(self.llm_config, dict):
            raise ConfigError(f"llm_config must be a mapping (the LLM's own config), got {type(self.llm_config).__name__}")
        super().__post_init__(**kwargs)

    def __getattr__(self, name: str) -> Any:
        if name in MMLLM_FIELDS and "mmllm" in self.__dict__:
            return getattr(self.mmllm, name)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "mmllm": self.mmllm.to_dict()}

