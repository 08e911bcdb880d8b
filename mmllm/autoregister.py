"""Registering with transformers' Auto classes without making `import mmllm` load torch.

Registration needs transformers' config and model base classes, which import torch (seconds), while
`import mmllm` stays light: the `mmllm` command sets OpenMP's wait policy before torch loads. So
`import mmllm` only installs a finder, and the registration runs right after the import that first brings
in transformers' Auto classes. It waits until no transformers or mmllm module is still executing:
registering halfway through that import would re-enter modules that are not initialised yet
(transformers' model base class imports its Auto config module; mmllm's model module imports transformers).
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from importlib.machinery import ModuleSpec

AUTO_CONFIG = "transformers.models.auto.configuration_auto"
WATCHED = ("transformers.", "mmllm.")


class RegisterAfterImport:  # no importlib.abc base: importing it would double the time of `import mmllm`
    """A `sys.meta_path` finder that counts the transformers and mmllm imports in progress; when the last one
    ends with transformers' Auto classes loaded, it leaves `sys.meta_path` and registers mmllm with them."""

    def __init__(self) -> None:
        self.running = 0

    def find_spec(self, name: str, path: Sequence[str] | None, target: ModuleType | None = None) -> ModuleSpec | None:
        if not name.startswith(WATCHED):
            return None
        finders = (f for f in sys.meta_path if f is not self and hasattr(f, "find_spec"))
        spec = next((s for f in finders if (s := f.find_spec(name, path, target)) is not None), None)
        if spec is not None and hasattr(spec.loader, "exec_module"):
            spec.loader.exec_module = self.counted(spec.loader.exec_module)
        return spec

    def counted(self, exec_module: Callable[[ModuleType], None]) -> Callable[[ModuleType], None]:
        def run(module: ModuleType) -> None:
            self.running += 1
            try:
                exec_module(module)
            finally:
                self.running -= 1
            if not self.running and AUTO_CONFIG in sys.modules and self in sys.meta_path:
                sys.meta_path.remove(self)
                register()

        return run


def register() -> None:
    """AutoConfig, AutoModel, AutoModelForImageTextToText and AutoProcessor load a saved folder after `import mmllm`."""
    from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

    from .hf import MMLLMHFConfig
    from .model import MMLLM
    from .processor import MMLLMProcessor

    AutoConfig.register(MMLLMHFConfig.model_type, MMLLMHFConfig)
    for auto in (AutoModel, AutoModelForImageTextToText):
        auto.register(MMLLMHFConfig, MMLLM)
    AutoProcessor.register(MMLLMHFConfig, MMLLMProcessor)


def install() -> None:
    """Registers now when transformers' Auto classes are already loaded, else once they are."""
    if AUTO_CONFIG in sys.modules:
        register()
    else:
        sys.meta_path.insert(0, RegisterAfterImport())
