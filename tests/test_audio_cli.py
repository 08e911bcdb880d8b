"""Audio through the command line: synth asr, a 3-step fit per architecture, eval --task asr."""
import json
from pathlib import Path

import pytest
import torch

from mmllm.train.synth import synthesize

AUDIO_CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "asr_tiny.yaml")
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("arch", ["nvlm_d", "nvlm_x", "nvlm_h"])
def test_three_step_fit_per_arch_with_audio(arch, tmp_path, mmllm, tiny_yaml):
    if arch == "nvlm_d":
        mmllm("data", "synth", "--task", "asr", "--n", "8", "--out", "d", cwd=tmp_path)
    else:  # in-process: one subprocess less
        synthesize("asr", tmp_path / "d", 8)
    proc = mmllm("fit", "--config", tiny_yaml, "--config", AUDIO_CONFIG, "--model.arch", arch,
                 "--data.train", "d/train.jsonl", "--data.batch_size", "4", "--trainer.max_steps", "3", "--trainer.default_root_dir", "out", cwd=tmp_path)
    assert f"arch={arch}" in proc.stdout and "whisper audio" in proc.stdout and "audio stack x4 + MLP" in proc.stdout
    ckpt = next((tmp_path / "out").rglob("last.ckpt"))
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["global_step"] == 3 and state["hyper_parameters"]["audio"]["max_seconds"] == 4
    if arch == "nvlm_d":
        mmllm("eval", "--task", "asr", "--ckpt", str(ckpt), "--data", "d", "--out", "ev", "--max_new_tokens", "4",
              cwd=tmp_path)
        summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
        assert (summary["metric"], summary["n"], summary["skipped"]) == ("wer", 8, 0) and "corpus_cer" in summary


def test_compare_reports_wer_next_to_the_vision_tasks(tmp_path):
    from mmllm.eval.compare import compare
    from mmllm.eval.comparison import DataSet

    table = compare(fit_config=["configs/nvlm_d_tiny.yaml", "configs/asr_tiny.yaml"], archs=["nvlm_h"], max_steps=2,
                    train=[DataSet("ocr", "ocr", n=8), DataSet("asr", "asr", n=8)],
                    test=[DataSet("ocr-test", "ocr", n=4, seed=2, eval="ocr"),
                          DataSet("asr-test", "asr", n=4, seed=3, eval="asr")],
                    out=str(tmp_path), tile_sweep_batch=0,
                    fit_overrides=["--data.batch_size=4", "--trainer.val_check_interval=null"])
    assert "ocr-test (exact_match, %)" in table and "asr-test (wer, %, lower is better)" in table
    runs = json.loads((tmp_path / "report" / "metrics.json").read_text())["runs"]
    assert set(runs[0]["scores"]) == {"ocr-test", "asr-test"}
    assert (tmp_path / "report" / "samples-nvlm_h-asr-test.png").is_file()
