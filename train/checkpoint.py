"""Checkpoints that survive being killed, and resumes that continue the run exactly.

Three pieces, each doing one job:
- `AtomicCheckpointIO` writes a checkpoint beside its target and renames it over the target, so a kill
  during a save leaves the previous file whole (Lightning's own save goes through a temporary directory
  that may sit on another filesystem, where the final move truncates the target and copies into it).
  It loads with `weights_only=True`: a `.ckpt` is a pickle, and only plain tensors and containers are read.
- `RNGStates` saves every process's Python, NumPy and torch generators and restores them just before the
  first batch after a resume (restoring earlier would be undone by what Lightning draws while it sets up).
  The data loader's position and its sampler's and workers' seeds are saved by the loader itself
  (`StatefulDataLoader`, see `train/data.py`), which Lightning checkpoints with the loop.
- `find_resume_checkpoint` turns `--ckpt_path last` into the newest intact `last*.ckpt` below every folder
  a run writes to, skipping (with a warning) one that a kill left unreadable.
"""
from __future__ import annotations

import random
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from mmllm.jsonl import replace_atomically


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any = None) -> None:
        replace_atomically(path, lambda fh: torch.save(checkpoint, fh))

    def load_checkpoint(self, path, map_location: Callable | None = None, weights_only: bool | None = None) -> dict:
        if not is_intact(path):
            raise ValueError(f"{path} is not a readable checkpoint (truncated, empty or not a torch zip file)")
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


def is_intact(path: str | Path) -> bool:
    """A torch checkpoint is a zip file whose central directory sits at its end: a file cut short by a kill
    has none. Cheap (reads the directory, not the tensors)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return bool(archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def find_resume_checkpoint(folders: Iterable[str | Path]) -> Path | None:
    """The newest intact `last*.ckpt` below any of `folders`; unreadable ones are named and passed over."""
    found = {p.resolve() for folder in folders if Path(folder).is_dir() for p in Path(folder).rglob("last*.ckpt")}
    for path in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True):
        if is_intact(path):
            return path
        warnings.warn(f"[mmllm] {path} is unreadable (a kill during a save?); trying the next newest", stacklevel=2)
    return None


def rng_state() -> dict[str, Any]:
    """This process's generators, as plain lists and tensors so the checkpoint loads weights-only."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RNGStates(L.Callback):
    """Every rank's generators go into the checkpoint; a resumed rank gets its own back before its first batch."""

    def __init__(self) -> None:
        self.pending: dict[str, Any] | None = None

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        # Saving runs on every rank (only rank 0 writes), so the gather is collective.
        states = [rng_state()]
        if trainer.world_size > 1:
            states = [None] * trainer.world_size
            torch.distributed.all_gather_object(states, rng_state())
        checkpoint["rng_states"] = states

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        states = checkpoint.get("rng_states")
        if states is None:
            warnings.warn("[mmllm] the checkpoint has no random-generator states; the resumed run will differ",
                          stacklevel=2)
        elif len(states) != trainer.world_size:
            warnings.warn(f"[mmllm] the checkpoint holds {len(states)} ranks' generator states, this run has "
                          f"{trainer.world_size}; generators are not restored", stacklevel=2)
        else:
            self.pending = states[trainer.global_rank]

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if self.pending is not None:
            set_rng_state(self.pending)
            self.pending = None
