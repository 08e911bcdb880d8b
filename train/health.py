"""Run health: bad samples are counted and reported, and a run stops on too many of them or on a NaN loss."""
from __future__ import annotations

import lightning as L
import torch

SPLITS = ("train", "val", "test")


class TrainingAborted(RuntimeError):
    """Raised to stop a run on purpose; the CLI prints it as one line."""


class BadSampleMonitor(L.Callback):
    """Counts malformed lines (found at load), bad samples and truncations per split, prints a summary
    with ids and reasons at the end of each train/val/test epoch and logs the counts (`bad_samples`,
    `val_bad_samples`, `test_bad_samples`; `truncated`, `val_truncated`, `test_truncated`).

    It also logs `padding_fraction`, the pad tokens among all tokens of the epoch's training batches (over
    all ranks), and prints the run's once at the end: what length-grouped batching lowers.

    Bad training samples are replaced, so past the datamodule's `max_bad_fraction` they would skew the
    run: it aborts. Bad val/test samples are dropped from their batch, not replaced, so they are counted
    and reported only. Truncated samples (audio clips cut to the window, samples cut to max_length) were
    used, so they do not count as bad."""

    def __init__(self, show: int = 10) -> None:
        self.show = show
        self.bad: dict[str, list[str]] = {split: [] for split in SPLITS}
        self.truncated: dict[str, list[str]] = {split: [] for split in SPLITS}
        self.total_bad = 0
        self.padding = self.tokens = 0
        self.run_padding = self.run_tokens = 0.0

    def _dataset(self, trainer: L.Trainer, split: str):
        return trainer.datamodule.dataset(split) if trainer.datamodule is not None else None

    def _start(self, split: str) -> None:
        self.bad[split], self.truncated[split] = [], []

    def _collect(self, split: str, batch) -> None:
        self.bad[split] += batch.bad
        self.truncated[split] += batch.truncated

    def _end(self, trainer: L.Trainer, pl_module: L.LightningModule, split: str) -> None:
        self.report(trainer, split)
        prefix = "" if split == "train" else f"{split}_"
        # Each rank sees its own shard: the logged counts are the sums over ranks.
        for name, items in (("bad_samples", self.bad[split]), ("truncated", self.truncated[split])):
            pl_module.log(f"{prefix}{name}", float(len(items)), on_epoch=True, on_step=False, sync_dist=True,
                          reduce_fx="sum")

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start("train")
        self.padding = self.tokens = 0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self._collect("train", batch)
        if batch.inputs is not None:  # summed on the device; read once, at the epoch's end
            mask = batch.inputs.attention_mask
            self.padding, self.tokens = self.padding + (mask == 0).sum(), self.tokens + mask.numel()
        ds = self._dataset(trainer, "train")
        size = len(ds) + len(ds.bad_lines) if ds is not None else 0
        n_bad = len(self.bad["train"]) + (len(ds.bad_lines) if ds is not None else 0)
        limit = trainer.datamodule.max_bad_fraction if ds is not None else 1.0
        if size and n_bad > limit * size:
            self.report(trainer, "train", gather=False)
            raise TrainingAborted(
                f"{n_bad} bad samples out of {size} exceed max_bad_fraction={limit}; "
                f"first: {(ds.bad_lines and str(ds.bad_lines[0])) or self.bad['train'][0]}"
            )

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.report_padding(trainer, pl_module)
        self._end(trainer, pl_module, "train")
        self.total_bad += len(self.bad["train"])

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start("val")

    def on_validation_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int,
                                  dataloader_idx: int = 0) -> None:
        self._collect("val", batch)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:  # the sanity batches are seen again by the first real validation
            self._end(trainer, pl_module, "val")

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start("test")

    def on_test_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int,
                            dataloader_idx: int = 0) -> None:
        self._collect("test", batch)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._end(trainer, pl_module, "test")

    def report_padding(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Pad tokens / all tokens of the epoch's batches, summed over ranks before dividing."""
        counts = torch.tensor([float(self.padding), float(self.tokens)], dtype=torch.float64, device=pl_module.device)
        padding, tokens = trainer.strategy.reduce(counts, reduce_op="sum").tolist()
        if not tokens:
            return
        pl_module.log("padding_fraction", padding / tokens, on_epoch=True, on_step=False, sync_dist=True)
        self.run_padding, self.run_tokens = self.run_padding + padding, self.run_tokens + tokens

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and self.run_tokens:
            print(f"[mmllm] padding_fraction {self.run_padding / self.run_tokens:.4f} over the run "
                  f"({int(self.run_padding):,} pad of {int(self.run_tokens):,} batch tokens)")

    def report(self, trainer: L.Trainer, split: str = "train", gather: bool = True) -> None:
        """Printed once, by rank 0, with every rank's samples: ranks printing their own lists would interleave
        mid-line. `gather` False (a rank stopping the run alone, where no other rank would join the
        gathering) prints this rank's lists only."""
        ds = self._dataset(trainer, split)
        lines = list(map(str, ds.bad_lines)) if ds is not None else []  # every rank indexes the same files
        bad, truncated = self.bad[split], self.truncated[split]
        if gather and trainer.world_size > 1:
            gathered: list = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, (bad, truncated))
            if not trainer.is_global_zero:
                return
            bad, truncated = [b for g in gathered for b in g[0]], [t for g in gathered for t in g[1]]
        items = lines + bad + truncated
        if not items:
            return
        label = f"epoch {trainer.current_epoch}" + ("" if split == "train" else f" {split}")
        print(
            f"[mmllm] {label}: {len(bad)} sample(s) {'replaced' if split == 'train' else 'dropped'}, "
            f"{len(lines)} malformed line(s) skipped at load, {len(truncated)} truncated and kept"
        )
        for item in items[: self.show]:
            print(f"  - {item}")
        if len(items) > self.show:
            print(f"  ... and {len(items) - self.show} more")


def check_finite(loss: torch.Tensor, step: int, ids: list[str]) -> None:
    """Stop before backward/optimizer step when the loss is NaN/inf, naming the step and samples."""
    if not torch.isfinite(loss).all():
        raise TrainingAborted(f"non-finite loss ({loss.item()}) at step {step}; batch sample ids: {ids}")
