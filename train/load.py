"""`load_model`: the one way a trained model comes back, from whatever a run or `mmllm export` left. It lives in
train/ because it rebuilds the training module from a checkpoint's hyperparameters; eval/ and the CLI import it."""
from __future__ import annotations

from pathlib import Path

from mmllm.model import MMLLM, check_finite_weights

from .checkpoint import is_sharded, read_checkpoint
from .module import MMLLMModule, ModuleConfig


def load_model(ckpt: str | Path) -> MMLLM:
    """A `save_pretrained` folder or a Lightning checkpoint (a `.ckpt` or a sharded checkpoint's folder), loaded
    weights-only; weights holding NaN or inf are refused, naming the tensor."""
    ckpt = Path(ckpt)
    if ckpt.is_dir() and not is_sharded(ckpt):
        return MMLLM.from_pretrained(ckpt)
    if not ckpt.exists():
        raise FileNotFoundError(f"checkpoint not found: {ckpt}")
    not_lightning = f"{ckpt} is not a Lightning checkpoint (nor a save_pretrained folder)"
    try:
        state = read_checkpoint(ckpt)
    except Exception as exc:  # pickle, zip and format errors alike: the file is not a checkpoint
        raise ValueError(f"{not_lightning}: it could not be read ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or not {"state_dict", "hyper_parameters"} <= state.keys():
        raise ValueError(f"{not_lightning}: it holds no state_dict and hyper_parameters")
    hparams = dict(state["hyper_parameters"])
    hparams["encoder"] = dict(hparams["encoder"], pretrained=False)  # weights come from the checkpoint
    if hparams.get("audio"):
        hparams["audio"] = dict(hparams["audio"], pretrained=False)
    module = MMLLMModule(ModuleConfig.from_dict(hparams, where=f"{ckpt} hyper_parameters"))
    module.load_state_dict(state["state_dict"])
    check_finite_weights(module.model, ckpt)
    return module.model.eval()
