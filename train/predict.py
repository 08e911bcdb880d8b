"""What `mmllm predict` leaves behind: `predictions.jsonl` (one row per item, in input order) and
`summary.json` (counts, and every item skipped with its reason), so no item goes missing unnoticed."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from mmllm.jsonl import write_json, write_jsonl

from .data import Batch


class PredictionWriter(BasePredictionWriter):
    """Where `predict` writes predictions.jsonl and summary.json (`--predictions.*`).

    Collects each rank's rows, skipped items and truncation notes batch by batch; when `predict` ends,
    global rank 0 gathers them and writes `dirpath`/predictions.jsonl and summary.json atomically.

    One file, not one per rank: under DDP Lightning gives each rank a disjoint share of the items, while
    a user (or `mmllm eval --predictions`) wants one file in input order. Rows are short text, so sending
    them to rank 0 costs nothing next to generating them."""

    def __init__(self, dirpath: str | None = None) -> None:
        """`dirpath` None: the run's log folder (beside its config.yaml), or the trainer's default_root_dir
        when there is no logger."""
        super().__init__("batch")
        self.dirpath = dirpath
        self.rows: list[tuple[int, dict]] = []
        self.skipped: list[str] = []
        self.truncated: list[str] = []

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rows, self.skipped, self.truncated = [], [], []

    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: list[dict],
                           batch_indices: Sequence[int] | None, batch: Batch, batch_idx: int,
                           dataloader_idx: int) -> None:
        """Keeps the rows keyed by their line in the items file, which restores input order after a gather."""
        self.rows += [(record.line, row) for record, row in zip(batch.records, prediction)]
        self.skipped += batch.skipped
        self.truncated += batch.truncated

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        out = Path(self.dirpath or trainer.log_dir)  # every rank asks: log_dir is broadcast from rank 0
        shares = gather_on_rank_zero(trainer, (self.rows, self.skipped, self.truncated))
        if trainer.is_global_zero:
            self.write(trainer, pl_module, shares, out)
        trainer.strategy.barrier()  # every rank returns once the files exist

    def write(self, trainer: L.Trainer, pl_module: L.LightningModule, shares: list[tuple], out: Path) -> None:
        dataset = trainer.predict_dataloaders.dataset
        rows = [row for _, row in sorted((keyed for share in shares for keyed in share[0]), key=lambda k: k[0])]
        # Lines that are no item were left out at load, on every rank alike: counted once.
        skipped = [str(bad) for bad in getattr(dataset, "bad_lines", [])] + [s for share in shares for s in share[1]]
        truncated = [t for share in shares for t in share[2]]
        write_jsonl(out / "predictions.jsonl", rows)
        write_json(out / "summary.json", {
            "data": getattr(trainer.datamodule, "predict", None), "ckpt_path": trainer.ckpt_path,
            "max_new_tokens": pl_module.hparams.get("max_new_tokens"), "n": len(rows),
            "skipped": len(skipped), "skipped_items": skipped, "truncated": len(truncated), "truncated_items": truncated,
        })
        for item in skipped:
            print(f"[mmllm] skipped {item}")
        for note in truncated:
            print(f"[mmllm] {note}")
        print(f"[mmllm] wrote {len(rows)} predictions to {out / 'predictions.jsonl'}; "
              f"{len(skipped)} item(s) skipped (see {out / 'summary.json'})")


def gather_on_rank_zero(trainer: L.Trainer, share: Any) -> list[Any]:
    """Every rank's `share` on global rank 0, in rank order (an empty list elsewhere)."""
    if trainer.world_size == 1:
        return [share]
    shares = [None] * trainer.world_size if trainer.is_global_zero else None
    torch.distributed.gather_object(share, shares, dst=0)
    return shares or []
