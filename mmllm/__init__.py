"""mmllm: any encoder + any causal LM, wired as NVLM-D, NVLM-X or NVLM-H."""
from .autoregister import install
from .config import ARCHS, EncoderConfig, LLMConfig, MMLLMConfig, ProcessorConfig

__all__ = ["ARCHS", "EncoderConfig", "LLMConfig", "MMLLMConfig", "ProcessorConfig", "MMLLM"]


def __getattr__(name: str):
    # The model pulls in torch/transformers; keep `import mmllm` (and `mmllm --help`) light.
    if name == "MMLLM":
        from .model import MMLLM

        return MMLLM
    raise AttributeError(name)


install()  # with transformers' Auto classes, once they load (mmllm.autoregister)
