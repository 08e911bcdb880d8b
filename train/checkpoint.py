"""Checkpoints that survive being killed, and resumes that continue the run exactly.

Five pieces, each doing one job:
- `AtomicCheckpointIO` writes a checkpoint beside its target and renames it over the target, so a kill
  during a save leaves the previous file whole (Lightning's own save goes through a temporary directory
  that may sit on another filesystem, where the final move truncates the target and copies into it).
  It loads with `weights_only=True`: a `.ckpt` is a pickle, and only plain tensors and containers are read.
- `RunCheckpoint` also writes `last.ckpt` where a run stops: at its last step and at a SIGTERM.
- `DataResume` names what a resumed run reads differently, and lets it run another number of workers.
- `RNGStates` saves every process's Python, NumPy and torch generators and restores them just before the
  first batch after a resume (restoring earlier would be undone by what Lightning draws while it sets up).
  The data loader's position and its sampler's and workers' seeds are saved by the loader itself
  (`StatefulDataLoader`, see `train/data.py`), which Lightning checkpoints with the loop.
- `find_resume_checkpoint` turns `--ckpt_path last` into the newest intact `last*.ckpt` (a file, or a sharded
  checkpoint's folder) below every folder a run writes to, skipping (with a warning) one that a kill left
  unreadable. `read_checkpoint` reads either kind, for export, `--model.init_from` and eval, and an exported
  folder for `predict|validate|test --ckpt_path DIR`.
"""
from __future__ import annotations

import errno
import random
import shutil
import signal
import threading
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from mmllm.jsonl import replace_atomically


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any = None) -> None:
        """Atomic; unfinished files earlier saves left in the folder (a kill mid-save) are removed first, and a
        full disk is said to be one (torch reports it as an `unexpected pos` RuntimeError)."""
        remove_unfinished(Path(path).parent)
        try:
            replace_atomically(path, lambda fh: torch.save(checkpoint, fh))
        except (OSError, RuntimeError) as exc:
            if not disk_full(exc):
                raise
            free = shutil.disk_usage(Path(path).parent).free
            raise OSError(exc_errno(exc), f"disk full: no space left to save {path} ({free:,} bytes free there); "
                                          "the previous checkpoint is kept whole") from None

    def load_checkpoint(self, path, map_location: Callable | None = None, weights_only: bool | None = None) -> dict:
        return read_checkpoint(path)


# A sharded checkpoint (FSDP's `state_dict_type: sharded`, FSDP2's `save_distributed_checkpoint`) is a folder:
# torch.distributed.checkpoint's shards and index, and Lightning's other state in this file.
SHARDED_META = "meta.pt"


def is_sharded(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / SHARDED_META).is_file() and (Path(path) / ".metadata").is_file()


FULL_DISK = (errno.ENOSPC, errno.EDQUOT)


def exc_errno(exc: BaseException | None) -> int | None:
    """The errno of the first OSError in an exception's chain (torch raises its own error over a failed write)."""
    seen = set()
    while exc is not None and id(exc) not in seen:  # a chain can loop back on itself
        if isinstance(exc, OSError) and exc.errno is not None:
            return exc.errno
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def disk_full(exc: BaseException) -> bool:
    return exc_errno(exc) in FULL_DISK


def remove_unfinished(folder: Path) -> None:
    """Removes the temporary files (`.NAME.ckpt.XXXX.tmp`) that saves killed mid-write left in `folder`."""
    left = sorted(folder.glob(".*.ckpt.*.tmp"))
    for path in left:
        path.unlink(missing_ok=True)
    if left:
        print(f"[mmllm] removed {len(left)} unfinished checkpoint file(s) that killed saves left in {folder}: "
              f"{', '.join(p.name for p in left)}")


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


def is_exported(path: str | Path) -> bool:
    """A `save_pretrained` folder (`mmllm export`): config.json beside safetensors weights."""
    path = Path(path)
    return path.is_dir() and (path / "config.json").is_file() and any(
        (path / name).is_file() for name in ("model.safetensors", "model.safetensors.index.json"))


def exported_hyperparameters(path: str | Path) -> dict[str, Any]:
    """The model settings of an exported folder (its config.json alone, no weights read), as a `.ckpt` keeps them."""
    from mmllm.model import read_config

    return read_config(str(path), {}).mmllm.to_dict()


def read_exported(path: str | Path) -> dict[str, Any]:
    """An exported folder as a checkpoint holding only weights and model settings, so `predict`, `validate` and
    `test --ckpt_path DIR` take what `mmllm export` writes. Loaded by `MMLLM.from_pretrained` (safetensors only,
    weights that do not fill the model refused)."""
    from mmllm.model import MMLLM

    model = MMLLM.from_pretrained(path)
    return {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "hyper_parameters": model.config.mmllm.to_dict(), "pytorch-lightning_version": L.__version__}


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint as one dict on the CPU, read weights-only: a `.ckpt` file, or a sharded folder
    consolidated in this process (its weights under "state_dict", as in a file), or an exported folder
    (`read_exported`). Shards come through torch.distributed.checkpoint, whose index is a pickle: read sharded
    folders of your own runs only."""
    path = Path(path)
    if is_exported(path):
        return read_exported(path)
    if not is_intact(path):
        raise ValueError(f"{path} is not a readable checkpoint (truncated, empty, not a torch zip file, "
                         f"nor a sharded checkpoint folder or an exported model folder)")
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
    """The newest intact `last*.ckpt` below any of `folders`; unreadable ones, and symlinks that lead nowhere
    or round in a loop, are named and passed over."""
    found = set()
    for path in (p for folder in folders if Path(folder).is_dir() for p in Path(folder).rglob("last*.ckpt")):
        try:
            found.add(path.resolve(strict=True))
        except (OSError, RuntimeError):  # a dangling link (FileNotFoundError), a loop (RuntimeError or ELOOP)
            warnings.warn(f"[mmllm] {path} is a symlink to no file (dangling or looping); passed over", stacklevel=2)
    for path in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True):
        if is_intact(path):
            return path
        warnings.warn(f"[mmllm] {path} is unreadable (a kill during a save?); trying the next newest", stacklevel=2)
    return None


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint (`--checkpoint.*`) that also writes `last.ckpt` where a run stops.

    - At its last step: Lightning writes it at the end only when nothing was saved before, so a run ending
      between two intervals (130 steps, every 100) left its last steps in no checkpoint;
    - At a SIGTERM (what a cluster scheduler sends before it kills a job), after the step it arrived in, by
      every rank together; the run then exits with code 143 (`train.cli.run`), not 0.

    Lightning's own SIGTERM handler broadcasts from inside the handler, so under DDP a rank signalled in the
    middle of another collective (a scheduler signals each rank at its own moment) hangs or mismatches, and
    no save can be joined. Ours only raises a flag; after every batch the ranks agree on it with one
    all-reduce (the cost of the broadcast Lightning already makes per step), then save and stop as one."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.signalled = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Lightning installs its handler just before training; ours replaces it, keeping a handler the user's
        code had installed before the run."""
        super().on_train_start(trainer, pl_module)
        if threading.current_thread() is not threading.main_thread():
            return  # signals reach the main thread only
        earlier = getattr(trainer._signal_connector, "_original_handlers", {}).get(signal.SIGTERM)

        def note(signum: int, frame: Any) -> None:
            self.signalled = True
            if callable(earlier):
                earlier(signum, frame)

        self.signalled = False
        signal.signal(signal.SIGTERM, note)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any) -> None:
        """The run's last step is saved after its batch, where every other step is: saved at the end of the run
        instead, a resume would skip a batch (max_steps) or a whole epoch (max_epochs)."""
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
        if ends_run(trainer):
            self.on_train_end(trainer, pl_module)
        elif self.any_rank_signalled(trainer):
            if self.save_last and self._last_global_step_saved != trainer.global_step:
                self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            raise SIGTERMException()

    def any_rank_signalled(self, trainer: L.Trainer) -> bool:
        if trainer.world_size == 1:
            return self.signalled
        flag = torch.tensor([float(self.signalled)], device=trainer.strategy.root_device)
        return bool(trainer.strategy.reduce(flag, reduce_op="max").item())

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """What other ends (max_time, early stopping) leave unsaved is saved here."""
        if self.save_last and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException) and trainer.is_global_zero and not trainer.sanity_checking:
            print(f"[mmllm] SIGTERM at step {trainer.global_step}: {self.last_model_path or 'no checkpoint'} "
                  f"holds step {self._last_global_step_saved}; resume with --ckpt_path last", flush=True)
        super().on_exception(trainer, pl_module, exception)


class DataResume(L.Callback):
    """What a resumed run reads, against what the checkpoint's run read (`MMDataModule.identity`, saved in the
    checkpoint): another training set or batch size is named on the console, and the run goes on.

    Another `--data.num_workers` works too: the loader's saved state holds its workers' snapshots, which a
    loader with another count cannot take, so it is dropped and the sampler's own position (epoch and samples
    yielded, the same in both forms) is put back instead: the run continues at the same sample."""

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if hasattr(trainer.datamodule, "identity"):
            checkpoint["data"] = trainer.datamodule.identity()

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        data, saved = trainer.datamodule, checkpoint.get("data")
        if saved is None or not hasattr(data, "identity") or trainer.state.fn != "fit":
            return
        now = data.identity()
        for key, what in (("train", "training set"), ("batch_size", "--data.batch_size")):
            if saved[key] != now[key] and trainer.is_global_zero:
                print(f"[mmllm] resuming with another {what}: {now[key]} now, {saved[key]} in the checkpoint's "
                      "run; the epoch goes on at its sample position, in the order of this run's data")
        loaders = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {}).get("combined_loader")
        if saved["num_workers"] == now["num_workers"] or not loaders:
            return
        main = loaders[0].get("_snapshot", {}).get("_main_snapshot", loaders[0])
        position = (main.get("_sampler_iter_state") or {}).get("sampler_state")
        if position is None:
            raise ValueError(f"the checkpoint's loader ran {saved['num_workers']} workers and keeps no sampler "
                             f"position to continue from with {now['num_workers']}; resume with "
                             f"--data.num_workers {saved['num_workers']}")
        loaders[0] = {}  # the loader starts afresh; its sampler starts at the saved position
        data.resume_position = position
        if trainer.is_global_zero:
            print(f"[mmllm] resuming with --data.num_workers {now['num_workers']} where the checkpoint's run had "
                  f"{saved['num_workers']}: the loader restarts at sample {position['yielded']} of epoch "
                  f"{position['epoch']} with fresh workers")


def ends_run(trainer: L.Trainer) -> bool:
    """Whether the step just taken is the run's last: the `max_steps`-th, or the last batch of the last epoch."""
    if 0 < trainer.max_steps <= trainer.global_step:
        return True
    last_epoch = trainer.max_epochs is not None and 0 < trainer.max_epochs <= trainer.current_epoch + 1
    return last_epoch and trainer.fit_loop.epoch_loop.batch_progress.is_last_batch


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
