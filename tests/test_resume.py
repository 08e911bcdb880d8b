"""A run killed with SIGKILL mid-epoch and resumed with `--ckpt_path last` continues exactly: the same
per-step losses as a run that was never interrupted (workers 0 and 2, one process and 2 DDP processes)."""
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mmllm.train.checkpoint import AtomicCheckpointIO, find_resume_checkpoint

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

# Runs `mmllm fit` (reading sys.argv, as the DDP launcher re-runs it for rank 1) with two observers: one appends every step's loss (exact repr) to a file
# per rank, the other SIGKILLs the process right after step KILL_AT (no cleanup, no final checkpoint).
DRIVER = textwrap.dedent("""
    import os, signal, sys
    import lightning as L
    from mmllm.train.cli import run

    class LossLog(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            with open(f"loss-rank{trainer.global_rank}.tsv", "a") as fh:
                fh.write(f"{trainer.global_step}\\t{outputs['loss'].item()!r} {batch.ids}\\n")

    class KillAt(L.Callback):
        def __init__(self, step):
            self.step = step
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if trainer.global_step == self.step:
                os.kill(os.getpid(), signal.SIGKILL)

    kill_at = int(os.environ.get("KILL_AT", "0"))
    run(None, extra_callbacks=[LossLog(), *([KillAt(kill_at)] if kill_at else [])])
""")

# 24 samples, batch 4: 6 steps an epoch, so step 13 is mid-epoch (epoch 2) and the checkpoint at step 10
# is mid-epoch too. Dropout makes the model's own draws from the torch generator matter.
STEPS, EVERY, KILL = 18, 5, 13


def fit_args(data: Path, root: str, workers: int, devices: int) -> list[str]:
    return [
        "fit", "--config", str(REPO / "configs" / "nvlm_d_tiny.yaml"), "--data.train", str(data),
        "--data.batch_size", "4", "--data.num_workers", str(workers), "--trainer.max_steps", str(STEPS),
        "--trainer.val_check_interval", "null", "--trainer.default_root_dir", root,
        "--trainer.devices", str(devices), *(["--trainer.strategy", "ddp"] if devices > 1 else []),
        "--trainer.enable_progress_bar", "false", "--checkpoint.every_n_train_steps", str(EVERY),
        "--model.llm.options.attention_dropout", "0.1", "--model.warmup_steps", "2",
    ]


def drive(cwd: Path, args: list[str], kill_at: int = 0) -> int:
    env = {**os.environ, "KILL_AT": str(kill_at), "OMP_NUM_THREADS": "1"}
    env.pop("MMLLM_DEBUG", None)
    (cwd / "driver.py").write_text(DRIVER)
    proc = subprocess.run([sys.executable, "driver.py", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    if proc.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"fit exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.returncode


def losses(path: Path) -> dict[int, str]:
    """step -> loss repr and sample ids; a step logged twice (killed run, then the resume) keeps the resume's value."""
    return dict(line.split("\t") for line in path.read_text().splitlines())


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from mmllm.train.synth import synthesize

    out = tmp_path_factory.mktemp("data")
    synthesize("ocr", out, 24, seed=0, level="easy")
    return out / "train.jsonl"


@pytest.mark.parametrize("workers,devices", [(0, 1), (2, 1), (0, 2)], ids=["workers0", "workers2", "ddp2"])
def test_a_run_killed_mid_epoch_resumes_with_identical_per_step_losses(data, tmp_path, workers, devices):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    whole.mkdir(), broken.mkdir()
    assert drive(whole, fit_args(data, "out", workers, devices)) == 0
    assert drive(broken, fit_args(data, "out", workers, devices), kill_at=KILL) == -signal.SIGKILL
    killed = losses(broken / "loss-rank0.tsv")
    assert max(map(int, killed)) == KILL  # it really died mid-run
    assert drive(broken, [*fit_args(data, "out", workers, devices), "--ckpt_path", "last"]) == 0
    for rank in range(devices):
        expected, resumed = losses(whole / f"loss-rank{rank}.tsv"), losses(broken / f"loss-rank{rank}.tsv")
        assert len(expected) == STEPS
        assert resumed == expected  # steps 11..18 recomputed after the resume, bit for bit


def test_a_kill_during_a_save_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "w": torch.ones(3)}, target)

    def dies_mid_write(obj, fh, *args, **kwargs):
        fh.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # what a kill looks like from inside the write

    monkeypatch.setattr(torch, "save", dies_mid_write)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 2, "w": torch.zeros(3)}, target)
    monkeypatch.undo()
    assert io.load_checkpoint(target)["global_step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no partial file left behind


def test_resume_skips_an_unreadable_last_checkpoint_for_the_newest_intact_one(tmp_path):
    io = AtomicCheckpointIO()
    good = tmp_path / "version_0" / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 7}, good)
    cut = tmp_path / "version_1" / "checkpoints" / "last.ckpt"
    cut.parent.mkdir(parents=True)
    cut.write_bytes(b"")  # what a kill inside a non-atomic save leaves
    os.utime(good, (1, 1))  # the broken one is the newest
    with pytest.warns(UserWarning, match="unreadable"):
        assert find_resume_checkpoint([tmp_path]) == good.resolve()
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        io.load_checkpoint(cut)


def test_resume_finds_the_checkpoint_under_a_logger_folder_outside_the_root(data, tmp_path):
    logger = ["--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", "logs"]
    args = [*fit_args(data, "out", 0, 1), *logger, "--checkpoint.every_n_train_steps", "3"]
    drive(tmp_path, [*args, "--trainer.max_steps", "3"])
    assert not (tmp_path / "out").exists() and list((tmp_path / "logs").rglob("last.ckpt"))
    drive(tmp_path, [*args, "--trainer.max_steps", "5", "--ckpt_path", "last"])
    steps = [line.split("\t")[0] for line in (tmp_path / "loss-rank0.tsv").read_text().splitlines()]
    assert steps == ["1", "2", "3", "4", "5"]  # the second run trained steps 4 and 5 only: it resumed
