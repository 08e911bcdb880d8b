"""What a run prints: our lines, not the engine's advertisements and deprecation notes, and a progress
line every so many steps when the output is a log file rather than a terminal (a progress bar there is
one unreadable line)."""
from __future__ import annotations

import logging
import re
import sys
import time
import warnings

import lightning as L
from transformers.utils import logging as transformers_logging

# Messages from the libraries under us that say nothing about the user's run.
NOT_OURS = (
    r".*isinstance\(treespec, LeafSpec\)` is deprecated",  # Lightning's own use of a torch API
    r"Starting from v1\.9\.0, `tensorboardX` has been removed",  # the default logger is CSV; we know
    r"Total length of `.*` across ranks is zero\. Please make sure",  # no val set: a choice, not a mistake
    r"The dirpath has changed from .* won't be reloaded",  # predict/validate/resume write to their own folder
    # `run(args)` is how Python callers (compare, tests) pass a command line: the process's own argv is theirs.
    r"LightningCLI's args parameter is intended to run from within Python",
)
# Log lines of every run that repeat what the config chose (its seed, its accelerator); a rank > 0 prefixes
# `[rank: N] `.
NOISE = re.compile(r"^💡 Tip:|Seed set to \d+$|^GPU available: |^TPU available: ")
NOISY_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "lightning.fabric.utilities.seed")


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not NOISE.search(str(record.msg))


def quiet_engine() -> None:
    """Filters only the messages listed above, and transformers' per-file `Loading weights` / `Writing
    model shards` bars (weight loading is ours to report); every other warning still shows."""
    for pattern in NOT_OURS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in NOISY_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise())
    transformers_logging.disable_progress_bar()


def on_terminal() -> bool:
    return sys.stderr.isatty()


class ProgressLines(L.Callback):
    """`[mmllm] step 200/3000  loss 1.234  0.061 s/step  eta 2m50s` every `every` steps (at least 10 lines
    in a shorter run) and `[mmllm] step 500/3000  val_loss 1.234` after each validation, only where no
    progress bar is shown (Lightning's bar shows `train_loss`, `val_loss` and the epoch's remaining time).
    The s/step behind the ETA includes the time spent validating, so the ETA does too."""

    def __init__(self, every: int = 200) -> None:
        self.every = self.interval = every
        self.start = time.perf_counter()
        self.start_step = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start, self.start_step = time.perf_counter(), trainer.global_step
        if trainer.max_steps and trainer.max_steps > 0:
            self.interval = min(self.every, max(1, trainer.max_steps // 10))

    def _prints(self, trainer: L.Trainer) -> bool:
        return trainer.progress_bar_callback is None and trainer.is_global_zero

    def _total(self, trainer: L.Trainer) -> str:
        return f"/{trainer.max_steps}" if trainer.max_steps and trainer.max_steps > 0 else ""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if not self._prints(trainer) or step % self.interval:
            return
        rate = (time.perf_counter() - self.start) / max(1, step - self.start_step)
        loss = outputs["loss"].item() if isinstance(outputs, dict) and "loss" in outputs else float("nan")
        eta = f"  eta {duration(rate * (trainer.max_steps - step))}" if self._total(trainer) else ""
        print(f"[mmllm] step {step}{self._total(trainer)}  loss {loss:.4f}  {rate:.3f} s/step{eta}", flush=True)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """After the validation metrics are reduced over the run's val batches (and ranks)."""
        val_loss = trainer.callback_metrics.get("val_loss")
        if trainer.sanity_checking or trainer.state.fn != "fit" or val_loss is None or not self._prints(trainer):
            return
        print(f"[mmllm] step {trainer.global_step}{self._total(trainer)}  val_loss {float(val_loss):.4f}", flush=True)


def duration(seconds: float) -> str:
    """`42s`, `3m12s`, `2h05m`: the precision an ETA has."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
