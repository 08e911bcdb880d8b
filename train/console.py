"""What a run prints: our lines, not the engine's advertisements and deprecation notes, and a progress
line every so many steps when the output is a log file rather than a terminal (a progress bar there is
one unreadable line)."""
from __future__ import annotations

import logging
import sys
import time
import warnings

import lightning as L

# Messages from the libraries under us that say nothing about the user's run.
NOT_OURS = (
    r".*isinstance\(treespec, LeafSpec\)` is deprecated",  # Lightning's own use of a torch API
    r"Starting from v1\.9\.0, `tensorboardX` has been removed",  # the default logger is CSV; we know
)
ADVERTS = ("💡 Tip:",)


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(ADVERTS)


def quiet_engine() -> None:
    """Filters only the messages listed above; every other warning still shows."""
    for pattern in NOT_OURS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_DropAdverts())


def on_terminal() -> bool:
    return sys.stderr.isatty()


class ProgressLines(L.Callback):
    """`[mmllm] step 200/3000  loss 1.234  0.061 s/step` every `every` steps (at least 10 lines in a
    shorter run), only where no progress bar is shown."""

    def __init__(self, every: int = 200) -> None:
        self.every = self.interval = every
        self.start = time.perf_counter()
        self.start_step = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start, self.start_step = time.perf_counter(), trainer.global_step
        if trainer.max_steps and trainer.max_steps > 0:
            self.interval = min(self.every, max(1, trainer.max_steps // 10))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if trainer.progress_bar_callback is not None or not trainer.is_global_zero or step % self.interval:
            return
        rate = (time.perf_counter() - self.start) / max(1, step - self.start_step)
        total = f"/{trainer.max_steps}" if trainer.max_steps and trainer.max_steps > 0 else ""
        loss = outputs["loss"].item() if isinstance(outputs, dict) and "loss" in outputs else float("nan")
        print(f"[mmllm] step {step}{total}  loss {loss:.4f}  {rate:.3f} s/step", flush=True)
