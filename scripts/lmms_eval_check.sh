#!/usr/bin/env bash
# Checks mmllm's lmms-eval plugin against a real lmms-eval, offline and on CPUs, on a tiny saved model:
#   (a) a 2-process `torchrun` run (gloo) of the shipped local tasks in examples/lmms_eval_task;
#   (b) a 2-process multiple-choice run whose keys are the model's own favourites (keyed_items.py): acc must be 1;
#   (c) tests/test_lmms_adapter.py with lmms-eval importable, so its real-lmms-eval test runs instead of skipping.
# lmms-eval goes into a throwaway venv layered over .venv (torch etc. are reused; .venv is not changed). A fresh
# clone gets .venv first from `make install` (a no-op when it is up to date).
# Usage: scripts/lmms_eval_check.sh [pip requirement ...]   default: lmms-eval==0.7.3 'filelock<4'
#        NPROC=1 for lmms-eval 0.6.x, whose many-process gather fails on gloo (it needs GPUs / NCCL).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
[ -f "$ROOT/.venv/.mmllm-installed" ] || echo "== make install (.venv for this clone; a few minutes)"
make -s -C "$ROOT" --no-print-directory install
BASE=$ROOT/.venv/bin/python
SPEC=("$@")
[ ${#SPEC[@]} -gt 0 ] || SPEC=("lmms-eval==0.7.3" "filelock<4")
NPROC=${NPROC:-2}
WORK=$(mktemp -d -t lmms-eval-check.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
export HF_HOME=$WORK/hf HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=1
# torchrun on CPUs: accelerate must build the gloo group too, or it sees one process (the adapter says so)
export ACCELERATE_USE_CPU=1

fail() { echo "FAILED: $1 (last lines of $2):"; tail -25 "$2"; exit 1; }

echo "== installing ${SPEC[*]} into a throwaway venv over .venv"
"$BASE" -m venv "$WORK/venv"
PY=$WORK/venv/bin/python
site_of() { "$1" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }
# addsitedir, not a bare path: it also runs .venv's .pth files (the editable mmllm and its entry point)
echo "import site; site.addsitedir('$(site_of "$BASE")')" > "$(site_of "$PY")/_over_mmllm_venv.pth"
"$PY" -m pip install --disable-pip-version-check "${SPEC[@]}" > "$WORK/pip.log" 2>&1 || fail "pip install" "$WORK/pip.log"
"$PY" -c 'from importlib.metadata import version as v; print("lmms-eval", v("lmms_eval"), "| filelock", v("filelock"), "| torch", v("torch"))'

cd "$ROOT"  # the shipped tasks name their data relative to the repository root
"$PY" - "$WORK/model" <<'EOF' > "$WORK/model.log" 2>&1 || fail "saving the tiny model" "$WORK/model.log"
import sys

import torch

sys.path.insert(0, "tests")
from conftest import tiny_config  # the tests' tiny model: timm ViT + 2-layer Llama, random weights
from mmllm.model import MMLLM

torch.manual_seed(0)
MMLLM(tiny_config()).save_pretrained(sys.argv[1])
EOF
"$PY" examples/lmms_eval_task/keyed_items.py "$WORK/model" "$WORK/keyed" > "$WORK/keyed.log" 2>&1 ||
    fail keyed_items.py "$WORK/keyed.log"

run() {  # run NAME INCLUDE_PATH TASKS: one lmms-eval launch of NPROC processes; prints its scores
    echo "== ($1) torchrun --nproc_per_node $NPROC -m lmms_eval --tasks $3"
    "$PY" -m torch.distributed.run --nproc_per_node "$NPROC" --master_port "$((29500 + RANDOM % 1000))" \
        -m lmms_eval --model mmllm --model_args "pretrained=$WORK/model" --include_path "$2" --tasks "$3" \
        --output_path "$WORK/out_$1" > "$WORK/$1.log" 2>&1 || fail "lmms-eval ($1)" "$WORK/$1.log"
    "$PY" - "$WORK/out_$1" <<'EOF' || fail "scores ($1)" "$WORK/$1.log"
import json
import sys
from pathlib import Path

paths = list(Path(sys.argv[1]).rglob("*_results.json"))
if len(paths) != 1:
    sys.exit("lmms-eval wrote no results")  # it may exit 0 after logging an error
report = json.loads(paths[0].read_text())
docs = len(Path("examples/lmms_eval_task/items.jsonl").read_text().splitlines())
for task, scores in sorted(report["results"].items()):
    metrics = {k.split(",")[0]: v for k, v in scores.items() if k.endswith(",none") and "stderr" not in k}
    n = report["n-samples"][task]["effective"]
    print(f"{task}: {n} docs, " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(metrics.items())))
    assert n == docs, f"{task}: {n} of the {docs} docs came back"
    assert task != "mmllm_choice_keyed" or metrics["acc"] == 1.0, "the model's favourites were not picked"
EOF
}
run a examples/lmms_eval_task mmllm_ocr_local,mmllm_choice_local
run b "$WORK/keyed" mmllm_choice_keyed

echo "== (c) pytest tests/test_lmms_adapter.py with lmms-eval installed"
"$PY" -m pytest -q -p no:cacheprovider -rs tests/test_lmms_adapter.py > "$WORK/pytest.log" 2>&1 || fail pytest "$WORK/pytest.log"
tail -1 "$WORK/pytest.log"
! grep -q skipped "$WORK/pytest.log" || fail "a test skipped" "$WORK/pytest.log"
