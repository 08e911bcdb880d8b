"""A run killed with SIGKILL mid-epoch and resumed with `--ckpt_path last` continues exactly: the same
per-step losses as a run that was never interrupted (workers 0 and 2, one process and 2 DDP processes)."""
import errno
import os
import signal
from io import BufferedWriter, RawIOBase
from pathlib import Path

import pytest
import torch

from mmllm.train.checkpoint import AtomicCheckpointIO, find_resume_checkpoint

pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from mmllm.train.synth import synthesize

    out = tmp_path_factory.mktemp("data")
    synthesize("ocr", out, 24, seed=0, level="easy")
    return out / "train.jsonl"


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory, drive, fit_plan):
    """`uninterrupted(workers, devices, *args)`: every rank's per-step losses of a run never stopped, run once
    for the module (checkpoint intervals change no loss, so the runs compared with it may set their own)."""
    done: dict[tuple, list[dict[int, str]]] = {}

    def run(workers: int, devices: int, *args: str) -> list[dict[int, str]]:
        key = (workers, devices, *args)
        if key not in done:
            cwd = tmp_path_factory.mktemp("whole")
            drive(cwd, [*fit_plan.args(data, "out", workers, devices), *args])
            done[key] = [fit_plan.losses(cwd / f"loss-rank{rank}.tsv") for rank in range(devices)]
        return done[key]

    return run


def resumed_losses(cwd: Path, plan, devices: int = 1) -> list[dict[int, str]]:
    return [plan.losses(cwd / f"loss-rank{rank}.tsv") for rank in range(devices)]


@pytest.mark.parametrize("workers,devices", [(0, 1), (2, 1), (0, 2)], ids=["workers0", "workers2", "ddp2"])
def test_a_run_killed_mid_epoch_resumes_with_identical_per_step_losses(
        data, tmp_path, uninterrupted, workers, devices, drive, fit_plan):
    killed = drive(tmp_path, fit_plan.args(data, "out", workers, devices), kill_at=fit_plan.kill)
    assert killed.returncode == -signal.SIGKILL
    killed = fit_plan.losses(tmp_path / "loss-rank0.tsv")
    assert max(map(int, killed)) == fit_plan.kill  # it really died mid-run
    assert drive(tmp_path, [*fit_plan.args(data, "out", workers, devices), "--ckpt_path", "last"]).returncode == 0
    expected = uninterrupted(workers, devices)
    assert [len(e) for e in expected] == [fit_plan.steps] * devices
    assert resumed_losses(tmp_path, fit_plan, devices) == expected  # steps 11..18 recomputed after the resume, exactly


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


def test_resume_finds_the_checkpoint_under_a_logger_folder_outside_the_root(data, tmp_path, drive, fit_plan):
    logger = ["--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", "logs"]
    args = [*fit_plan.args(data, "out", 0, 1), *logger, "--checkpoint.every_n_train_steps", "3"]
    drive(tmp_path, [*args, "--trainer.max_steps", "3"])
    assert not (tmp_path / "out").exists() and list((tmp_path / "logs").rglob("last.ckpt"))
    drive(tmp_path, [*args, "--trainer.max_steps", "5", "--ckpt_path", "last"])
    steps = [line.split("\t")[0] for line in (tmp_path / "loss-rank0.tsv").read_text().splitlines()]
    assert steps == ["1", "2", "3", "4", "5"]  # the second run trained steps 4 and 5 only: it resumed


def last_step(root: Path) -> int:
    """The global step of the one last.ckpt below `root`."""
    (last,) = root.rglob("last.ckpt")
    return torch.load(last, map_location="cpu", weights_only=True)["global_step"]


@pytest.mark.parametrize("workers,devices", [(0, 1), (2, 1), (0, 2)], ids=["workers0", "workers2", "ddp2"])
def test_a_run_resumed_from_a_checkpoint_on_an_epochs_last_batch_sees_the_next_epoch_in_the_same_order(
        data, tmp_path, uninterrupted, workers, devices, drive, fit_plan):
    every = ["--checkpoint.every_n_train_steps", "6"]  # 6 steps an epoch: every checkpoint on an epoch's end
    drive(tmp_path, [*fit_plan.args(data, "out", workers, devices), *every], kill_at=8)
    assert last_step(tmp_path / "out") == 6
    drive(tmp_path, [*fit_plan.args(data, "out", workers, devices), *every, "--ckpt_path", "last"])
    assert resumed_losses(tmp_path, fit_plan, devices) == uninterrupted(workers, devices)


@pytest.mark.parametrize("devices,ranks", [(1, "0"), (2, "1")], ids=["one-process", "ddp2-rank1-only"])
def test_sigterm_during_fit_writes_last_ckpt_at_the_signal_exits_143_and_resumes_exactly(
        data, tmp_path, uninterrupted, devices, ranks, drive, fit_plan):
    """Under DDP a scheduler signals each rank at its own moment: here only rank 1 hears it, and both stop
    after that step with one checkpoint of it."""
    kill = fit_plan.kill
    proc = drive(tmp_path, fit_plan.args(data, "out", 0, devices), kill_at=kill, kill_signal="SIGTERM",
                 kill_ranks=ranks, expect=(143,))
    (last,) = (tmp_path / "out").rglob("last.ckpt")
    assert last_step(tmp_path / "out") == kill  # not the step-10 checkpoint before it
    assert (f"[mmllm] SIGTERM at step {kill}: {last.relative_to(tmp_path)} holds step {kill}; resume with "
            "--ckpt_path last") in proc.stdout
    assert all(max(map(int, log)) == kill for log in resumed_losses(tmp_path, fit_plan, devices))
    drive(tmp_path, [*fit_plan.args(data, "out", 0, devices), "--ckpt_path", "last"])
    assert resumed_losses(tmp_path, fit_plan, devices) == uninterrupted(0, devices)


def test_a_full_disk_during_a_save_says_so_with_the_path_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "w": torch.ones(3)}, target)
    fdopen = os.fdopen

    class FullDisk(RawIOBase):
        """A file on a disk with 4 KiB left: the write past it fails as the OS fails it."""

        def __init__(self, fd: int) -> None:
            self.raw, self.left = fdopen(fd, "wb", buffering=0), 4096

        def writable(self) -> bool:
            return True

        def write(self, data) -> int:
            if len(data) > self.left:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.left -= len(data)
            return self.raw.write(data)

        def fileno(self) -> int:
            return self.raw.fileno()

        def close(self) -> None:
            self.raw.close()
            super().close()

    monkeypatch.setattr(os, "fdopen", lambda fd, mode="r", *a, **k: BufferedWriter(FullDisk(fd)))
    with pytest.raises(OSError) as err:
        io.save_checkpoint({"global_step": 2, "w": torch.zeros(100_000)}, target)
    monkeypatch.undo()
    assert err.value.errno == errno.ENOSPC
    assert str(err.value).startswith(f"[Errno 28] disk full: no space left to save {target} (")
    assert str(err.value).endswith(" bytes free there); the previous checkpoint is kept whole")
    assert io.load_checkpoint(target)["global_step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_unfinished_files_of_killed_saves_are_removed_by_the_next_save(tmp_path, capsys):
    left = [tmp_path / ".last.ckpt.k3j2h1ab.tmp", tmp_path / ".epoch=0-step=30.ckpt.zz9y8x7w.tmp"]
    for path in left:
        path.write_bytes(b"PK\x03\x04" + b"\0" * 1000)  # what a kill mid-save leaves
    (tmp_path / "notes.tmp").write_text("mine")
    AtomicCheckpointIO().save_checkpoint({"global_step": 3}, tmp_path / "last.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "notes.tmp"]
    assert capsys.readouterr().out == (f"[mmllm] removed 2 unfinished checkpoint file(s) that killed saves left in "
                                       f"{tmp_path}: {left[1].name}, {left[0].name}\n")


@pytest.mark.parametrize("link", ["dangling", "looping"])
def test_resume_passes_over_a_last_ckpt_symlink_to_no_file_for_the_intact_checkpoint_beside_it(tmp_path, link):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    AtomicCheckpointIO().save_checkpoint({"global_step": 7}, folder / "last-v1.ckpt")
    os.utime(folder / "last-v1.ckpt", (1, 1))
    (folder / "last.ckpt").symlink_to("epoch=0-step=9.ckpt" if link == "dangling" else "last.ckpt")
    with pytest.warns(UserWarning, match="last.ckpt is a symlink to no file \\(dangling or looping\\); passed over"):
        assert find_resume_checkpoint([tmp_path]) == (folder / "last-v1.ckpt").resolve()


@pytest.mark.parametrize("before,after", [(0, 2), (2, 0)])
def test_a_run_resumed_with_another_worker_count_continues_at_the_same_sample_with_identical_losses(
        data, tmp_path, uninterrupted, before, after, drive, fit_plan):
    drive(tmp_path, fit_plan.args(data, "out", before, 1), kill_at=fit_plan.kill)
    proc = drive(tmp_path, [*fit_plan.args(data, "out", after, 1), "--ckpt_path", "last"])
    assert (f"[mmllm] resuming with --data.num_workers {after} where the checkpoint's run had {before}: the loader "
            "restarts at sample 16 of epoch 1 with fresh workers") in proc.stdout
    assert resumed_losses(tmp_path, fit_plan) == uninterrupted(before, 1)


def test_a_run_resumed_with_another_training_set_or_batch_size_says_so(data, tmp_path, drive, fit_plan):
    from mmllm.train.synth import synthesize

    synthesize("ocr", tmp_path / "other", 30, seed=1, level="easy")
    drive(tmp_path, fit_plan.args(data, "out", 0, 1), kill_at=fit_plan.kill)
    other = tmp_path / "other" / "train.jsonl"
    args = [*fit_plan.args(other, "out", 0, 1), "--data.batch_size", "2", "--ckpt_path", "last"]
    out = drive(tmp_path, args).stdout
    then = "in the checkpoint's run; the epoch goes on at its sample position, in the order of this run's data"
    assert (f"[mmllm] resuming with another training set: {other} (30 records) now, "
            f"{data} (24 records) {then}") in out
    assert f"[mmllm] resuming with another --data.batch_size: 2 now, 4 {then}" in out


@pytest.mark.parametrize("end,limit", [(16, ["--trainer.max_steps", "16"]), (12, ["--trainer.max_steps", "12"]),
                                       (12, ["--trainer.max_epochs", "2", "--trainer.max_steps", "-1"])],
                         ids=["mid_epoch", "epoch_end", "max_epochs"])
def test_a_finished_run_continued_to_more_steps_from_its_final_checkpoint_matches_one_run(
        data, tmp_path, uninterrupted, end, limit, drive, fit_plan):
    """At lr 0, since the schedule follows max_steps: what is compared is the data order and the generators."""
    args = [*fit_plan.args(data, "out", 0, 1), "--model.lr", "0"]
    drive(tmp_path, [*args, *limit])
    assert last_step(tmp_path / "out") == end  # 16 and 12: between two checkpoint intervals (every 5)
    drive(tmp_path, [*args, "--ckpt_path", "last"])
    assert resumed_losses(tmp_path, fit_plan) == uninterrupted(0, 1, "--model.lr", "0")
