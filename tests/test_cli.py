"""The command-line contract, run as a user would: in subprocesses, from a scratch folder."""
import json
import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("command", [[], ["fit"], ["eval"], ["data", "synth"], ["demo"]])
def test_every_command_has_help(command, tmp_path, mmllm):
    proc = mmllm(*command, "--help", cwd=tmp_path)
    assert "usage" in proc.stdout.lower()


def test_fit_then_eval_then_resume(tmp_path, mmllm, tiny_yaml):
    mmllm("data", "synth", "--task", "ocr", "--n", "24", "--out", "d", "--seed", "0", cwd=tmp_path)
    fit = ["fit", "--config", tiny_yaml, "--data.train", "d/train.jsonl", "--data.val", "d/train.jsonl",
           "--data.batch_size", "4", "--trainer.val_check_interval", "3", "--trainer.default_root_dir", "out"]
    proc = mmllm(*fit, "--trainer.max_steps", "3", cwd=tmp_path)
    assert "connector (pixel shuffle + MLPProjector)" in proc.stdout  # the parameter table is printed at start
    ckpts = sorted((tmp_path / "out").rglob("*.ckpt"))
    assert ckpts, "no checkpoint written"
    state = torch.load(ckpts[-1], map_location="cpu", weights_only=True)
    assert state["global_step"] == 3 and state["hyper_parameters"]["arch"] == "nvlm_d"

    mmllm("eval", "--task", "ocr", "--ckpt", str(ckpts[-1]), "--data", "d", "--out", "ev", "--batch_size", "5",
          cwd=tmp_path)
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert {"task", "metric", "score", "n", "skipped"} <= set(summary)
    assert (summary["task"], summary["metric"], summary["n"], summary["skipped"]) == ("ocr", "exact_match", 24, 0)
    rows = [json.loads(line) for line in (tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 24 and {"id", "prediction", "answers", "score"} <= set(rows[0])

    mmllm(*fit, "--trainer.max_steps", "5", "--ckpt_path", "last", cwd=tmp_path)
    last = max((tmp_path / "out").rglob("last*.ckpt"), key=lambda p: p.stat().st_mtime)
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 5


def test_config_alone_runs_on_synthesised_data(tmp_path, mmllm, tiny_yaml):
    mmllm("fit", "--config", tiny_yaml, "--trainer.max_steps", "3", "--data.synth_n", "32",
          "--trainer.default_root_dir", "out", cwd=tmp_path)
    assert list((tmp_path / "out").rglob("*.ckpt"))
    assert (tmp_path / "runs" / "data" / "ocr-easy-n32" / "train" / "items.jsonl").is_file()


def test_a_run_logged_to_a_file_prints_progress_lines_and_no_engine_adverts(tmp_path, mmllm, tiny_yaml):
    proc = mmllm("fit", "--config", tiny_yaml, "--trainer.max_steps", "20", "--data.synth_n", "32", cwd=tmp_path)
    steps = [line.split()[2] for line in proc.stdout.splitlines() if line.startswith("[mmllm] step ")]
    assert steps == [f"{k}/20" for k in range(2, 21, 2)]
    assert "Tip:" not in proc.stderr and "tensorboardX" not in proc.stderr and "LeafSpec" not in proc.stderr


def test_unknown_arch_is_rejected_with_the_valid_names(tmp_path, mmllm, tiny_yaml):
    proc = mmllm("fit", "--config", tiny_yaml, "--model.arch", "nvlm_q", cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert "nvlm_q" in proc.stderr and "nvlm_d" in proc.stderr


def test_errors_are_one_line_not_a_traceback(tmp_path, mmllm):
    proc = mmllm("eval", "--task", "ocr", "--ckpt", "nope.ckpt", "--data", "d", "--out", "o", cwd=tmp_path,
                 check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "mmllm: error: FileNotFoundError: checkpoint not found: nope.ckpt"
    proc = mmllm("data", "synth", "--task", "ocr", "--n", "0", "--out", "d", cwd=tmp_path, check=False)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1 and "n must be" in proc.stderr


@pytest.mark.parametrize("arch", ["nvlm_x", "nvlm_h"])
def test_three_step_fit_per_arch(arch, tmp_path, mmllm, tiny_yaml):
    mmllm("data", "synth", "--task", "chart", "--n", "8", "--out", "d", cwd=tmp_path)
    proc = mmllm("fit", "--config", tiny_yaml, "--model.arch", arch, "--data.train", "d/train.jsonl",
                 "--data.batch_size", "4", "--trainer.max_steps", "3", "--trainer.default_root_dir", "out", cwd=tmp_path)
    assert f"arch={arch}" in proc.stdout and "1 gated cross-attn" in proc.stdout
    state = torch.load(next((tmp_path / "out").rglob("last.ckpt")), map_location="cpu", weights_only=True)
    assert state["global_step"] == 3 and state["hyper_parameters"]["arch"] == arch


@pytest.mark.parametrize("user_setting,expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_the_command_makes_openmp_threads_wait_passively_before_torch_loads(tmp_path, user_setting, expected):
    script = ("import os, sys, mmllm.cli\nassert 'torch' not in sys.modules\nmmllm.cli.main(['--help'])\n"
              "print('torch' in sys.modules, os.environ['OMP_WAIT_POLICY'])")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env.update({"OMP_WAIT_POLICY": user_setting} if user_setting else {})
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == f"False {expected}"


def test_help_data_commands_and_scoring_predictions_start_without_torch_transformers_or_lightning(tmp_path):
    (tmp_path / "p.jsonl").write_text(json.dumps({"id": "a", "prediction": "x", "answers": ["x"]}) + "\n")
    script = ("import sys, mmllm.cli\n"
              "heavy = lambda: sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'lightning'})\n"
              "for argv in (['--help'], ['data', 'synth', '--task', 'ocr', '--n', '2', '--out', 'd'],\n"
              "             ['eval', '--task', 'ocr', '--predictions', 'p.jsonl', '--out', 'o']):\n"
              "    assert mmllm.cli.main(argv) == 0\n"
              "    print(argv[0], heavy())\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert [line for line in proc.stdout.splitlines() if line.endswith("]")] == ["--help []", "data []", "eval []"]
