"""What a run prints: progress with an ETA and the validation loss, and none of the engine's noise."""
import logging
import re
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PRODUCTION = ("mmllm", "encoders", "connectors", "train", "eval")


@pytest.fixture
def lightning_log():
    """The log records that reach Lightning's own handlers (its loggers do not propagate to the root)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    for logger in loggers:
        logger.addHandler(handler)
    yield records
    for logger in loggers:
        logger.removeHandler(handler)


def test_fit_prints_the_validation_loss_and_an_eta(tmp_path, capsys, recwarn, lightning_log):
    from mmllm.train.cli import run
    from mmllm.train.synth import synthesize

    synthesize("ocr", tmp_path / "d", 8, seed=0, level="easy")
    data = str(tmp_path / "d" / "train.jsonl")
    run(["fit", "--config", str(REPO / "configs" / "nvlm_d_tiny.yaml"), "--data.train", data, "--data.val", data,
         "--data.batch_size", "4", "--trainer.max_steps", "4", "--trainer.val_check_interval", "2",
         "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
         "--trainer.default_root_dir", str(tmp_path / "out")])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[mmllm] step")]
    step = r"\[mmllm\] step {}/4  loss \d+\.\d{{4}}  \d+\.\d{{3}} s/step  eta \d+s"
    val = r"\[mmllm\] step {}/4  val_loss \d+\.\d{{4}}"
    expected = [step.format(1), step.format(2), val.format(2), step.format(3), step.format(4), val.format(4)]
    assert len(lines) == len(expected) and all(re.fullmatch(e, line) for e, line in zip(expected, lines)), lines
    # Called from Python with its own args while pytest's argv is the process's: no warning about that.
    assert not [w for w in recwarn if "args parameter" in str(w.message)]
    assert not [r for r in lightning_log if re.search("Seed set to|GPU available|TPU available", r.getMessage())]


@pytest.mark.parametrize("seconds,shown", [(0.4, "0s"), (59.4, "59s"), (61, "1m01s"), (3599, "59m59s"),
                                           (3600 * 2 + 5 * 60 + 59, "2h05m")])
def test_an_eta_reads_in_the_units_it_needs(seconds, shown):
    from mmllm.train.console import duration

    assert duration(seconds) == shown


def test_the_engine_noise_is_filtered_and_every_other_warning_still_shows(lightning_log):
    import lightning as L
    from lightning.pytorch.utilities.rank_zero import rank_zero_info
    from transformers.utils import logging as transformers_logging

    from mmllm.train.console import quiet_engine

    transformers_logging.enable_progress_bar()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_engine()
        L.seed_everything(0)
        rank_zero_info("GPU available: False, used: False")
        rank_zero_info("TPU available: False, using: 0 TPU cores")
        rank_zero_info("HPU available: the next line a new Lightning may add")
        warnings.warn("Total length of `list` across ranks is zero. Please make sure this was your intention.")
        warnings.warn("The dirpath has changed from 'a' to 'b', therefore `best_model_score`, `kth_best_model_path`, "
                      "`kth_value`, `last_model_path` and `best_k_models` won't be reloaded. Only "
                      "`best_model_path` will be reloaded.")
        warnings.warn("The number of training batches (4) is smaller than the logging interval")
    assert [str(w.message) for w in caught] == ["The number of training batches (4) is smaller than the logging interval"]
    assert [r.getMessage() for r in lightning_log] == ["HPU available: the next line a new Lightning may add"]
    assert not transformers_logging.is_progress_bar_enabled()  # `Loading weights` / `Writing model shards`


def test_no_production_module_imports_unittest():
    pattern = re.compile(r"^\s*(import unittest|from unittest)", re.MULTILINE)
    offenders = [str(path.relative_to(REPO)) for folder in PRODUCTION for path in (REPO / folder).rglob("*.py")
                 if pattern.search(path.read_text())]
    assert offenders == []


def described_options(help_text: str) -> dict[str, str]:
    """`--name` -> its description in an argparse help: the text after the metavar (on the option's line or
    the lines below it) and before jsonargparse's `(type: ...)`."""
    options = {}
    for name, rest in re.findall(r"^  (--[\w.]+)(.*?)(?=^  --|^\S|\Z)", help_text, re.MULTILINE | re.DOTALL):
        first, _, below = rest.partition("\n")
        inline = re.split(r" {2,}", first.strip(), maxsplit=1)[1:]
        options[name] = " ".join(" ".join([*inline, below]).split("(type:")[0].split())
    return options


def test_fit_help_describes_every_model_and_data_option_the_tiny_config_sets(capsys):
    import yaml

    from mmllm.train.cli import run

    config = yaml.safe_load((REPO / "configs" / "nvlm_d_tiny.yaml").read_text())
    nested = {"encoder": "EncoderConfig", "llm": "LLMConfig", "processor": "ProcessorConfig"}
    helps = [["fit", "--help"]] + [["fit", f"--model.{key}.help", name] for key, name in nested.items()]
    options: dict[str, str] = {}
    for args in helps:
        with pytest.raises(SystemExit):
            run(args)
        options.update(described_options(capsys.readouterr().out))
    used = [f"--{part}.{key}" for part in ("model", "data") for key in config[part]]
    used += [f"--model.{key}.{field}" for key in nested for field in config["model"][key]]
    assert {name: options.get(name) for name in used if not options.get(name)} == {}


FLAT = "[mmllm] the loss has not moved"


def test_a_run_whose_loss_cannot_move_is_named_flat_once_with_its_usual_causes(tmp_path, capsys, recwarn):
    from mmllm.train.cli import run
    from mmllm.train.synth import synthesize

    synthesize("ocr", tmp_path / "d", 8, seed=0, level="easy")
    run(["fit", "--config", str(REPO / "configs" / "nvlm_d_tiny.yaml"), "--data.train",
         str(tmp_path / "d" / "train.jsonl"), "--data.batch_size", "4", "--trainer.max_steps", "50",
         "--model.lr", "0", "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path / "out")])
    flat = [line for line in capsys.readouterr().out.splitlines() if line.startswith(FLAT)]
    assert len(flat) == 1 and "over steps 21-25" in flat[0] and "--model.lr" in flat[0], flat
    (metrics,) = (tmp_path / "out").rglob("metrics.csv")
    assert "loss_flat" in metrics.read_text().splitlines()[0]
    assert not [w for w in recwarn if "ambiguous collection" in str(w.message)]  # logged with its batch size


class Recorder:
    """What FlatLoss needs of a trainer and a module: the step, the budget, rank 0, and `log`."""

    def __init__(self, max_steps: int) -> None:
        self.max_steps, self.global_step, self.is_global_zero, self.logged = max_steps, 0, True, {}

    def log(self, name, value, **kwargs) -> None:
        self.logged[name] = value


@pytest.mark.parametrize("curve,flat", [
    (lambda s: 5.6 if s < 5 else 3.1, True),  # the text prior learned, then nothing
    (lambda s: 5.6 - 4 * s / 100, False),  # still falling at half the run
    (lambda s: 5.6 if s < 5 else 0.05, False),  # learned early: low and flat
])
def test_flat_loss_tells_a_plateau_from_a_falling_loss_and_from_one_that_learned_early(capsys, curve, flat):
    import torch

    from mmllm.train.health import FlatLoss

    run = Recorder(100)
    monitor = FlatLoss()
    monitor.on_train_start(run, run)
    for step in range(1, 101):
        run.global_step = step
        monitor.on_train_batch_end(run, run, {"loss": torch.tensor(curve(step))}, None, step - 1)
    assert run.logged == {"loss_flat": float(flat)}
    assert (FLAT in capsys.readouterr().out) is flat
