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


class FlatLoss(L.Callback):
    """Says once, on the console and as `loss_flat` in the logs, when a run has not learned: a researcher with a
    flat loss on a first run cannot otherwise tell a bug from bad luck.

    Three windows of the training loss (each 2 % of the run, at least 5 steps): the start, at `reference` of the
    run (by then a language model has learned the answers' text prior, the quick first fall every run makes),
    and at `check` of the run. The loss is flat when the check window is less than `min_drop` below the
    reference window and still above `learned` times the start (a run that learned early sits low and flat).
    Runs under 50 steps are too short to say. Losses are summed on the device and read once per window."""

    def __init__(self, reference: float = 0.1, check: float = 0.5, min_drop: float = 0.2,
                 learned: float = 0.25) -> None:
        self.fractions = {"start": 0.0, "reference": reference, "check": check}
        self.min_drop, self.learned = min_drop, learned
        self.windows: dict[str, tuple[int, int]] = {}
        self.sums: dict[str, torch.Tensor | float] = {}
        self.counts: dict[str, int] = {}
        self.means: dict[str, float] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else trainer.estimated_stepping_batches
        self.windows = {}
        if not total or total == float("inf") or total < 50:
            return
        n = max(5, int(total) // 50)
        for name, fraction in self.fractions.items():
            end = max(n, round(fraction * total))
            self.windows[name] = (end - n + 1, end)  # steps first..last, as global_step counts after a step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        for name, (first, last) in self.windows.items():
            if name in self.means or not first <= step <= last or loss is None:
                continue
            self.sums[name] = self.sums.get(name, 0.0) + loss.detach().float()
            self.counts[name] = self.counts.get(name, 0) + 1
            if step == last:
                self.means[name] = float(self.sums.pop(name)) / self.counts.pop(name)
                if name == "check":
                    self.report(trainer, pl_module)

    def report(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not {"start", "reference"} <= self.means.keys():
            return  # resumed past a window this process did not see
        start, ref, now = (self.means[k] for k in ("start", "reference", "check"))
        flat = now > (1 - self.min_drop) * ref and now > self.learned * start
        # On the epoch (a step value shows only every log_every_n_steps); one value, not a mean over samples.
        pl_module.log("loss_flat", float(flat), on_step=False, on_epoch=True, batch_size=1)
        if flat and trainer.is_global_zero:
            (r0, r1), (c0, c1) = self.windows["reference"], self.windows["check"]
            print(f"[mmllm] the loss has not moved: {ref:.3f} over steps {r0}-{r1}, {now:.3f} over steps {c0}-{c1} "
                  f"(from {start:.3f} at the start). Usual causes: the answers do not depend on what the model sees "
                  "(media frozen, blank or mis-wired: see the parameter table and `mmllm controls`), a learning rate "
                  "too high or too low for this size (--model.lr), a warm-up as long as the run, or this seed not "
                  "yet past the plateau (README: A run that does not learn)", flush=True)

    def state_dict(self) -> dict:
        """A resumed run goes on with the windows' losses so far (read from the device at the save)."""
        return {"means": dict(self.means), "sums": {k: float(v) for k, v in self.sums.items()},
                "counts": dict(self.counts)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.means, self.sums, self.counts = (dict(state_dict.get(k, {})) for k in ("means", "sums", "counts"))
