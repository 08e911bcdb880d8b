"""scripts/gpu_check.sh runs end to end; on the CPU (`--smoke`) with the tiny model and 2 gloo processes."""
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_the_gpu_check_script_prints_one_table_of_bench_rows_and_fits(tmp_path):
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--smoke", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (tmp_path / "gpu_check.md").read_text()
    assert report in proc.stdout
    for model in ("nvlm_d", "nvlm_x", "nvlm_h", "llava", "mllama"):
        assert f"| tiny | 2 | {model} |" in report
    fits = [line.split("|")[1:-1] for line in report.splitlines() if line.split("|")[2:3] in (
        [" ddp "], [" fsdp1 "], [" fsdp2 "])]
    # the smoke fits each arch under one strategy: every arch and every strategy once
    assert [(arch.strip(), strategy.strip()) for arch, strategy, *_ in fits] == [
        ("nvlm_d", "ddp"), ("nvlm_x", "fsdp1"), ("nvlm_h", "fsdp2")]
    assert all(row[2].strip() == "2" and row[3].strip() == "3" for row in fits)  # 2 processes, 3 steps each
