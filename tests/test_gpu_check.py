"""scripts/gpu_check.sh runs end to end; on the CPU (`--smoke`) with the tiny model and DDP only."""
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
    fits = [line for line in report.splitlines() if line.endswith("|") and "| ddp |" in line]
    assert [line.split("|")[1].strip() for line in fits] == ["nvlm_d", "nvlm_x", "nvlm_h"]
    assert all(line.split("|")[3].strip() == "3" for line in fits)  # every fit ran its 3 steps
