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
- `find_resume_checkpoint` turns `--ckpt_path last` into the newest intact `last*.ckpt` (a file, or a sharded
  checkpoint's folder) below every folder a run writes to, skipping (with a warning) one that a kill left
  unreadable. `read_checkpoint` reads either kind, for export, `--model.init_from` and eval.
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
        return read_checkpoint(path)


# A sharded checkpoint (FSDP's `state_dict_type: sharded`, FSDP2's `save_distributed_checkpoint`) is a folder:
# torch.distributed.checkpoint's shards and index, and Lightning's other state in this file.
SHARDED_META = "meta.pt"


def is_sharded(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / SHARDED_META).is_file() and (Path(path) / ".metadata").is_file()


def is_intact(path: str | Path) -> bool:
    """A torch checkpoint is a zip file whose central directory sits at its end: a file cut short by a kill
    has none (a sharded folder: its index and its intact meta file). Cheap (reads directories, not tensors)."""
    path = Path(path)
    if path.is_dir():
        return is_sharded(path) and is_intact(path / SHARDED_META)
    try:
        with zipfile.ZipFile(path) as archive:
            return bool(archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint as one dict on the CPU, read weights-only: a `.ckpt` file, or a sharded folder
    consolidated in this process (its weights under "state_dict", as in a file). Shards come through
    torch.distributed.checkpoint, whose index is a pickle: read sharded folders of your own runs only."""
    path = Path(path)
    if not is_intact(path):
        raise ValueError(f"{path} is not a readable checkpoint (truncated, empty, not a torch zip file "
                         f"nor a sharded checkpoint folder)")
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True)
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.format_utils import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    shards: dict[str, Any] = {}
    _load_state_dict(shards, storage_reader=FileSystemReader(path), planner=_EmptyStateDictLoadPlanner(), no_dist=True)
    state = torch.load(path / SHARDED_META, map_location="cpu", weights_only=True)
    state["state_dict"] = shards.pop("model", None) or shards.pop("state_dict")  # FSDP1's name, FSDP2's
    optimizers = sorted(k for k in shards if k.startswith("optimizer_"))
    state["optimizer_states"] = [shards.pop(k) for k in optimizers]
    return state


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
