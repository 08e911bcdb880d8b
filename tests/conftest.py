import io
import itertools
import multiprocessing
import os
import runpy
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

# The tests' models are tiny: one thread a test process (xdist runs one a core) is the fastest, and the processes
# the tests start inherit it. Set before torch loads, which reads it once.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from mmllm.config import AudioConfig, EncoderConfig, LLMConfig, MMLLMConfig  # noqa: E402

# The helpers the test files share, each given to them by a session-scoped fixture of its name that returns the
# helper itself (`def test_x(tiny_config): tiny_config(arch="nvlm_x")`): test files take them as fixtures, never
# by importing conftest or each other; session scope lets module-scoped fixtures use them too. The helpers are
# private (`_tiny_config`) and each fixture is registered by `name=`.


def _tiny_config(**overrides) -> MMLLMConfig:
    """The smallest model that exercises every path: tall-patch timm ViT + 2-layer Llama."""
    base = dict(
        encoder=EncoderConfig(feature_layer=-1, options={"embed_dim": 32, "depth": 1, "num_heads": 2, "patch_size": [16, 4]}),
        llm=LLMConfig(options={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                               "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512}),
    )
    base.update(overrides)
    return MMLLMConfig(**base)


@pytest.fixture(scope="session", name="tiny_config")
def tiny_config_fixture():
    """`tiny_config(**overrides)`: the smallest model's config (see `_tiny_config`)."""
    return _tiny_config


@pytest.fixture
def tiny_model(tiny_config):
    """The tiny model, seeded, in eval mode; a fresh one per test (tests may change it)."""
    from mmllm.model import MMLLM

    torch.manual_seed(0)
    return MMLLM(tiny_config()).eval()


def _tiny_module(**kw):
    """The tiny model as the Lightning module that `mmllm fit` trains (SFT, encoder trainable)."""
    from mmllm.train.module import MMLLMModule, ModuleConfig

    cfg = _tiny_config()
    torch.manual_seed(0)
    return MMLLMModule(ModuleConfig(encoder=cfg.encoder, llm=cfg.llm, stage="sft", train_encoder=True, **kw))


@pytest.fixture(scope="session", name="tiny_module")
def tiny_module_fixture():
    """`tiny_module(**kw)`: a fresh tiny Lightning module, seeded (see `_tiny_module`)."""
    return _tiny_module


def _text_image(text: str, size=(128, 32)) -> Image.Image:
    """Black text on a white RGB image of `size`."""
    img = Image.new("RGB", size, "white")
    ImageDraw.Draw(img).text((4, 8), text, fill="black")
    return img


@pytest.fixture(scope="session", name="text_image")
def text_image_fixture():
    """`text_image(text, size=(128, 32))`: an image showing `text`."""
    return _text_image


def _text_bomb_png(path) -> None:
    """A small PNG whose text chunk decompresses past Pillow's limit: its decoder refuses it with a ValueError
    of its own (`Decompressed data too large for PngImagePlugin.MAX_TEXT_CHUNK`)."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * (PngImagePlugin.MAX_TEXT_CHUNK + 1), zip=True)
    _text_image("w").save(path, pnginfo=info)


@pytest.fixture(scope="session", name="text_bomb_png")
def text_bomb_png_fixture():
    """`text_bomb_png(path)`: writes a PNG its decoder refuses (see `_text_bomb_png`)."""
    return _text_bomb_png


def _chat(i: int, answer: str | None = None, **media) -> dict:
    """A text conversation (an `<image>` marker when an image is given): BOS + "User: " + "hi" + the
    assistant prefix (12) + answer + EOS, so 22 + len(answer) tokens with the byte tokenizer."""
    question = "<image>\nhi" if "image" in media else "hi"
    return {"id": f"t{i}", **media, "conversations": [
        {"from": "human", "value": question}, {"from": "gpt", "value": f"a{i}" if answer is None else answer}]}


@pytest.fixture(scope="session", name="chat")
def chat_fixture():
    """`chat(i, answer=None, **media)`: training record `t{i}` (see `_chat`)."""
    return _chat


def _line(row) -> bytes:
    """`row` as one JSON line."""
    import json

    return json.dumps(row).encode() + b"\n"


def _write_jsonl(path, rows) -> str:
    """Writes `rows` to `path` as JSON lines; returns the path as a string."""
    path.write_bytes(b"".join(map(_line, rows)))
    return str(path)


@pytest.fixture(scope="session", name="write_jsonl")
def write_jsonl_fixture():
    """`write_jsonl(path, rows) -> str`: `rows` written as JSON lines (see `_write_jsonl`)."""
    return _write_jsonl


def _tone(seconds: float, rate: int | None = None, hz: float = 440.0):
    """A float32 sine of `hz` at amplitude 0.3, `seconds` long at `rate` (default `mmllm.audio.SAMPLE_RATE`,
    imported here, not at the top: it brings in torchaudio and transformers)."""
    import numpy as np

    from mmllm.audio import SAMPLE_RATE

    rate = SAMPLE_RATE if rate is None else rate
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


@pytest.fixture(scope="session", name="tone")
def tone_fixture():
    """`tone(seconds, rate=SAMPLE_RATE, hz=440.0)`: a sine wave as a float32 array."""
    return _tone


def _bad_audio_files(root) -> dict[str, str]:
    """One file per bad-audio class, with the words its message must contain."""
    import numpy as np
    import soundfile as sf

    from mmllm.audio import SAMPLE_RATE

    sf.write(root / "nan.wav", np.array([0.1, np.nan, 0.2], dtype=np.float32), SAMPLE_RATE, subtype="FLOAT")
    (root / "empty.wav").write_bytes(b"")
    (root / "corrupt.flac").write_bytes(b"fLaC not really a flac stream")
    (root / "clip.m4a").write_bytes(b"\x00\x00\x00\x18ftypM4A ")
    sf.write(root / "silent.wav", np.zeros((0, 1), dtype=np.float32), SAMPLE_RATE)
    return {"missing.wav": "audio not found", "nan.wav": "NaN or infinite samples", "empty.wav": "empty audio file",
            "corrupt.flac": "cannot decode audio", "clip.m4a": "unsupported audio format '.m4a'",
            "silent.wav": "has no samples"}


@pytest.fixture(scope="session", name="bad_audio_files")
def bad_audio_files_fixture():
    """`bad_audio_files(root) -> {name: message}`: writes one bad file per class (see `_bad_audio_files`)."""
    return _bad_audio_files


@pytest.fixture(scope="session")
def audio_config() -> AudioConfig:
    """The tiny Whisper audio tower (4 s window, 4x token stack) of the audio model tests."""
    return AudioConfig(max_seconds=4, factor=4, options={"d_model": 32, "encoder_layers": 1,
                                                         "encoder_attention_heads": 2, "encoder_ffn_dim": 64})


@pytest.fixture(scope="session", name="as_terminal")
def as_terminal_fixture():
    """`as_terminal(monkeypatch) -> Terminal`: stderr as a terminal (see `_as_terminal`)."""
    return _as_terminal


class Terminal(io.StringIO):
    """A stderr that says it is a terminal, and keeps what is drawn on it."""

    def isatty(self) -> bool:
        return True


def _as_terminal(monkeypatch) -> Terminal:
    """stderr as a terminal, with progress bars drawn at once (not after `mmllm.progress.DELAY`). Called in the
    test itself: pytest puts its own stderr back between a fixture's setup and the test."""
    from mmllm import progress

    monkeypatch.setattr(progress, "DELAY", 0)
    monkeypatch.setattr(sys, "stderr", Terminal())
    return sys.stderr


# -- processes --------------------------------------------------------------------------------------------
# What the forked processes start with already imported: every command's heavy imports (torch, transformers,
# Lightning), paid for once per test worker instead of once per process (about 5 s each on 2 cores).
PRELOAD = ["mmllm.train.cli", "mmllm.eval.runner", "mmllm.eval.compare", "conftest"]


def _forked_main(argv: list[str], cwd: str, env: dict[str, str], out: str, err: str) -> None:
    """The body of a forked process: `python *argv` run in `cwd` with exactly `env`, its output to files."""
    os.setpgrp()  # a group of its own, so that a timeout stops its DDP ranks and loader workers with it
    multiprocessing.set_start_method(None, force=True)  # the platform's default, as in a fresh interpreter
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    for fd, path in ((1, out), (2, err)):
        file = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(file, fd)
        os.close(file)
    if "OMP_NUM_THREADS" in env:  # torch read it when the server imported it; the caller's setting wins
        import torch

        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    if argv[0] == "-m":
        sys.argv = [argv[1], *argv[2:]]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(argv)
        runpy.run_path(argv[0], run_name="__main__")


@pytest.fixture(scope="session")
def forked(tmp_path_factory):
    """`forked(argv, cwd=..., env=None, timeout=600)`: `subprocess.run([sys.executable, *argv], ...)` with its
    output captured, in a real process (a signal kills it, its exit code is its own, its children are real, and a
    DDP rank 1 is launched from it as from the command line), forked from a server that has the imports done.
    For the tests that need a process; a test of what a fresh interpreter imports runs `subprocess` itself."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    logs = tmp_path_factory.mktemp("forked")
    count = itertools.count()

    def run(argv: list[str], cwd, env: dict[str, str] | None = None, timeout: float = 600
            ) -> subprocess.CompletedProcess:
        env = dict(os.environ if env is None else env)
        n = next(count)
        out, err = logs / f"{n}.out", logs / f"{n}.err"
        process = context.Process(target=_forked_main, args=(list(argv), str(cwd), env, str(out), str(err)))
        process.start()
        process.join(timeout)
        if process.exitcode is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.join()
            raise subprocess.TimeoutExpired([sys.executable, *argv], timeout, out.read_text(), err.read_text())
        return subprocess.CompletedProcess([sys.executable, *argv], process.exitcode, out.read_text(),
                                           err.read_text())

    return run


REPO = Path(__file__).resolve().parents[1]
TINY_YAML = str(REPO / "configs" / "nvlm_d_tiny.yaml")


@pytest.fixture(scope="session")
def tiny_yaml() -> str:
    """The shipped tiny config (`configs/nvlm_d_tiny.yaml`), as the CLI tests pass it to `--config`."""
    return TINY_YAML


@pytest.fixture(scope="session")
def mmllm(forked):
    """`mmllm(*args, cwd=..., check=True)`: the `mmllm` command, run as a user runs it (a process of its own, in
    `cwd`; MMLLM_DEBUG unset, so errors read as a user sees them); a failure raises with the output when `check`."""

    def run(*args: str, cwd, check: bool = True) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k != "MMLLM_DEBUG"}
        proc = forked(["-m", "mmllm.cli", *args], cwd=cwd, env=env)
        if check and proc.returncode != 0:
            raise AssertionError(f"mmllm {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    return run


# Runs `mmllm fit` (reading sys.argv, as the DDP launcher re-runs it for rank 1) with two observers: one appends
# every step's loss (exact repr) and sample ids to a file per rank, the other sends KILL_SIGNAL (SIGKILL: no
# cleanup, no final checkpoint) right after step KILL_AT to the ranks in KILL_RANKS (default: all).
FIT_DRIVER = textwrap.dedent("""
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
            if trainer.global_step == self.step and str(trainer.global_rank) in os.environ.get("KILL_RANKS", "0 1"):
                os.kill(os.getpid(), getattr(signal, os.environ.get("KILL_SIGNAL", "SIGKILL")))

    kill_at = int(os.environ.get("KILL_AT", "0"))
    run(None, extra_callbacks=[LossLog(), *([KillAt(kill_at)] if kill_at else [])])
""")


@dataclass(frozen=True)
class FitPlan:
    """The short fit the process tests run and kill: 24 samples, batch 4, so 6 steps an epoch; 18 steps with a
    checkpoint every 5, so step 13 (where a run is killed) is mid-epoch, in epoch 2, and so is the step-10
    checkpoint. Attention dropout makes the model's own draws from the torch generator matter."""

    steps: int = 18
    every: int = 5
    kill: int = 13

    def args(self, data: Path, root: str, workers: int, devices: int) -> list[str]:
        return [
            "fit", "--config", TINY_YAML, "--data.train", str(data),
            "--data.batch_size", "4", "--data.num_workers", str(workers), "--trainer.max_steps", str(self.steps),
            "--trainer.val_check_interval", "null", "--trainer.default_root_dir", root,
            "--trainer.devices", str(devices), *(["--trainer.strategy", "ddp"] if devices > 1 else []),
            "--trainer.enable_progress_bar", "false", "--checkpoint.every_n_train_steps", str(self.every),
            "--model.llm.options.attention_dropout", "0.1", "--model.warmup_steps", "2",
        ]

    @staticmethod
    def losses(path: Path) -> dict[int, str]:
        """step -> loss repr and sample ids; a step logged twice (killed run, then the resume) keeps the resume's."""
        return dict(line.split("\t") for line in path.read_text().splitlines())


@pytest.fixture(scope="session")
def fit_plan() -> FitPlan:
    return FitPlan()


@pytest.fixture(scope="session")
def drive(forked):
    """`drive(cwd, args, kill_at=0, kill_signal="SIGKILL", expect=(0, -SIGKILL), kill_ranks="0 1")`: `mmllm fit
    *args` in a process of its own in `cwd`, logging each step's loss per rank (`FitPlan.losses`) and, with
    `kill_at`, sending itself `kill_signal` after that step; an exit code outside `expect` raises with the output."""

    def run(cwd: Path, args: list[str], kill_at: int = 0, kill_signal: str = "SIGKILL",
            expect: tuple[int, ...] = (0, -signal.SIGKILL), kill_ranks: str = "0 1") -> subprocess.CompletedProcess:
        env = {**os.environ, "KILL_AT": str(kill_at), "KILL_SIGNAL": kill_signal, "KILL_RANKS": kill_ranks,
               "OMP_NUM_THREADS": "1"}
        env.pop("MMLLM_DEBUG", None)
        (cwd / "driver.py").write_text(FIT_DRIVER)
        proc = forked(["driver.py", *args], cwd=cwd, env=env)
        if proc.returncode not in expect:
            raise AssertionError(f"fit exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc

    return run
