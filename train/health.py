"""Run health: bad samples are counted and reported, and a run stops on too many of them or on a NaN loss."""
from __future__ import annotations

import lightning as L
import torch


class TrainingAborted(RuntimeError):
    """Raised to stop a run on purpose; the CLI prints it as one line."""


class BadSampleMonitor(L.Callback):
    """Counts malformed lines (found at load) and samples replaced during the epoch, prints an
    end-of-epoch summary with ids and reasons, and aborts past the datamodule's `max_bad_fraction`.
    Audio clips truncated to the window are counted and listed too, but the samples were used, so
    they do not count towards the bad fraction."""

    def __init__(self, show: int = 10) -> None:
        self.show = show
        self.epoch_bad: list[str] = []
        self.epoch_truncated: list[str] = []
        self.total_bad = 0

    def _dataset(self, trainer: L.Trainer):
        return trainer.datamodule.dataset("train") if trainer.datamodule is not None else None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epoch_bad, self.epoch_truncated = [], []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self.epoch_bad += batch.bad
        self.epoch_truncated += batch.truncated
        ds = self._dataset(trainer)
        size = len(ds) + len(ds.bad_lines) if ds is not None else 0
        n_bad = len(self.epoch_bad) + (len(ds.bad_lines) if ds is not None else 0)
        limit = trainer.datamodule.max_bad_fraction if ds is not None else 1.0
        if size and n_bad > limit * size:
            self.report(trainer)
            raise TrainingAborted(
                f"{n_bad} bad samples out of {size} exceed max_bad_fraction={limit}; "
                f"first: {(ds.bad_lines and str(ds.bad_lines[0])) or self.epoch_bad[0]}"
            )

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.report(trainer)
        self.total_bad += len(self.epoch_bad)
        pl_module.log("bad_samples", float(len(self.epoch_bad)), on_epoch=True, on_step=False)
        pl_module.log("truncated_audio", float(len(self.epoch_truncated)), on_epoch=True, on_step=False)

    def report(self, trainer: L.Trainer) -> None:
        ds = self._dataset(trainer)
        lines = list(map(str, ds.bad_lines)) if ds is not None else []
        items = lines + self.epoch_bad + self.epoch_truncated
        if not items:
            return
        print(
            f"[mmllm] epoch {trainer.current_epoch}: {len(self.epoch_bad)} sample(s) replaced, "
            f"{len(lines)} malformed line(s) skipped at load, {len(self.epoch_truncated)} audio clip(s) truncated"
        )
        for item in items[: self.show]:
            print(f"  - {item}")
        if len(items) > self.show:
            print(f"  ... and {len(items) - self.show} more")


def check_finite(loss: torch.Tensor, step: int, ids: list[str]) -> None:
    """Stop before backward/optimizer step when the loss is NaN/inf, naming the step and samples."""
    if not torch.isfinite(loss).all():
        raise TrainingAborted(f"non-finite loss ({loss.item()}) at step {step}; batch sample ids: {ids}")
