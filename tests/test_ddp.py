"""Two DDP processes on the CPU (gloo): what is logged is about the whole run, not rank 0's shard."""
import csv
import json
import re

import pytest

pytestmark = pytest.mark.slow


def test_bad_sample_counts_are_summed_over_ranks_and_listed_once_by_rank_zero(tmp_path, drive, fit_plan):
    from mmllm.train.synth import synthesize

    synthesize("ocr", tmp_path / "d", 24, seed=0, level="easy")
    lines = (tmp_path / "d" / "train.jsonl").read_text().splitlines()
    missing = [json.dumps({**json.loads(lines[0]), "id": f"gone-{k}", "image": "images/none.png"}) for k in range(4)]
    (tmp_path / "d" / "train.jsonl").write_text("\n".join(lines + missing) + "\n")
    args = fit_plan.args(tmp_path / "d" / "train.jsonl", "out", 0, 2)
    proc = drive(tmp_path, [*args, "--trainer.max_steps", "8", "--data.max_bad_fraction", "0.2",
                     "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", "out",
                     "--data.val", str(tmp_path / "d" / "train.jsonl"), "--trainer.check_val_every_n_epoch", "1"])
    rows = list(csv.DictReader(next((tmp_path / "out").rglob("metrics.csv")).open()))
    per_epoch = [float(r["bad_samples"]) for r in rows if r.get("bad_samples")]
    assert per_epoch == [4.0, 4.0]  # 28 records, 4 bad, each seen by one of the two ranks per epoch
    assert [float(r["val_bad_samples"]) for r in rows if r.get("val_bad_samples")] == [4.0, 4.0]
    # One report per epoch and split, from rank 0, listing both ranks' samples (not one per rank, interleaved).
    reports = [line for line in proc.stdout.splitlines() if line.startswith("[mmllm] epoch")]
    assert sorted(reports) == sorted(f"[mmllm] epoch {epoch}{split}: 4 sample(s) {verb}, 0 malformed line(s) "
                                     "skipped at load, 0 truncated and kept"
                                     for epoch in (0, 1) for split, verb in (("", "replaced"), (" val", "dropped")))
    listed = [re.search(r"gone-\d", line) for line in proc.stdout.splitlines() if line.startswith("  - ")]
    assert sorted(m.group() for m in listed if m) == sorted([f"gone-{k}" for k in range(4)] * 4)
