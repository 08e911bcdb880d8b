"""One table from one GPU machine: the peer benchmark at ~1B in bf16, and 100-step bf16-mixed fits of NVLM-D,
-X and -H under DDP, FSDP1 and FSDP2 (named units) on a data mix where a quarter of the samples are text only,
with 2 processes where the machine has 2 or more devices. Each fit runs in its own process(es), so its peak
memory is its own; tokens/s counts every rank's tokens over the wall time of the steps, data loading included.
`--smoke` runs the same path on the CPU (2 gloo processes) with the tiny model and a few steps, which is what
the test suite checks; it fits each arch under one strategy (D with DDP, X with FSDP1, H with FSDP2), so every arch
and every strategy runs in three fits instead of nine.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from mmllm.config import ARCHS

REPO = Path(__file__).resolve().parents[1]
STRATEGIES = {"ddp": "ddp", "fsdp1": json.dumps({"class_path": "mmllm.train.fsdp.NamedUnitsFSDP"}),
              "fsdp2": json.dumps({"class_path": "mmllm.train.fsdp.NamedUnitsFSDP2"})}


# A fit runs as `gpu_check.py fit ARGS` with its row's path in this variable: the command line is the fit's own,
# so Lightning's launcher can start the second process with it.
FIT_OUT = "MMLLM_GPU_CHECK_FIT_OUT"


def fit_one(out: Path) -> None:
    """Runs the fit of this command line in this process and writes its step time, throughput, last loss and
    peak memory."""
    import lightning as L
    import torch

    from mmllm.train.cli import run

    class Measure(L.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.loss = float("nan")
            self.tokens = 0

        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            self.start = time.perf_counter()
            self.first = getattr(self, "first", self.start)

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.end = time.perf_counter()
            self.times.append(self.end - self.start)
            self.loss = outputs["loss"].item()
            self.tokens += int(batch.inputs.attention_mask.sum())

        def on_train_end(self, trainer, module) -> None:
            self.tokens = int(trainer.strategy.reduce(torch.tensor(float(self.tokens), device=module.device),
                                                      reduce_op="sum"))
            self.world, self.rank = trainer.world_size, trainer.global_rank

    measure = Measure()
    run(None, extra_callbacks=[measure])
    if measure.rank:  # rank 0 writes the row
        return
    steady = sorted(measure.times[len(measure.times) // 5:])  # past the warm-up steps
    step = steady[len(steady) // 2]
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    out.write_text(json.dumps({"step_s": step, "tokens_per_s": measure.tokens / (measure.end - measure.first),
                               "loss": measure.loss, "peak_gb": peak, "steps": len(measure.times),
                               "processes": measure.world}))


def text_mix(work: Path, n: int) -> Path:
    """Synthetic OCR lines plus a third as many text-only conversations (LLaVA's mix has them), in one file."""
    from mmllm.train.synth import synthesize_once

    folder = work / "data" / f"ocr-easy-n{n}"
    synthesize_once("ocr", folder, n, seed=0, level="easy")
    words = "zero one two three four five six seven eight nine".split()
    text = [json.dumps({"id": f"text-{k}", "conversations": [
        {"from": "human", "value": f"Count on from {words[k % 10]}."},
        {"from": "gpt", "value": " ".join(words[(k + j) % 10] for j in range(1, 4))}]}) for k in range(n // 3)]
    mix = folder / "mix.jsonl"
    mix.write_text((folder / "train.jsonl").read_text() + "\n".join(text) + "\n")
    return mix


def fits(smoke: bool, work: Path) -> list[dict]:
    import torch

    config = REPO / "configs" / ("nvlm_d_tiny.yaml" if smoke else "gpu_1b.yaml")
    steps, n = (3, 32) if smoke else (100, 1000)
    devices = 2 if smoke else min(2, max(1, torch.cuda.device_count()))
    mix = text_mix(work, n)
    rows = []
    pairs = zip(ARCHS, STRATEGIES) if smoke else [(arch, name) for arch in ARCHS for name in STRATEGIES]
    for arch, name in pairs:
        strategy = STRATEGIES[name]
        out = work / f"fit-{arch}-{name}.json"
        args = ["fit", "--config", str(config), "--model.arch", arch, "--trainer.max_steps", str(steps),
                "--trainer.strategy", strategy, "--trainer.devices", str(devices),
                "--trainer.default_root_dir", str(work / f"{arch}-{name}"), "--data.train", str(mix)]
        args += ["--data.batch_size", "4"] if smoke else []
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                              env={**os.environ, FIT_OUT: str(out)})
        row = {"arch": arch, "strategy": name, "wall_s": time.perf_counter() - start}
        if proc.returncode:
            row["error"] = (proc.stderr.strip().splitlines() or ["exit %d" % proc.returncode])[-1]
        else:
            row.update(json.loads(out.read_text()))
        rows.append(row)
        print(f"[gpu_check] fit {arch} {name}: " + (row.get("error") or
              f"{row['step_s'] * 1000:.0f} ms/step, loss {row['loss']:.3f}"), flush=True)
    return rows


def table(bench: dict, fit_rows: list[dict]) -> str:
    from mmllm.eval.bench_report import fmt
    from mmllm.eval.report import markdown_table

    measured = markdown_table(
        ["size", "tiles", "model", "step ms", "MFU %", "train tok/s", "gen tok/s", "peak MB"],
        [[r["size"], r["tiles"], r["model"], fmt(r["step_s"] * 1000, ".1f"), fmt(r["mfu"] and 100 * r["mfu"], ".1f"),
          fmt(r["train_tokens_per_s"], ".0f"), fmt(r["tokens_per_s"], ".1f"), fmt(r["peak_mb"], ".0f")]
         for r in bench["rows"]])
    ratios = markdown_table(["size", "tiles", "pair", "step time", "generation time"],
                            [[r["size"], r["tiles"], r["pair"], fmt(r["step_s"], ".2f"), fmt(r["gen_s"], ".2f")]
                             for r in bench["ratios"]])
    trained = markdown_table(
        ["arch", "strategy", "processes", "steps", "ms/step", "tokens/s", "last loss", "peak GB", "wall s"],
        [[r["arch"], r["strategy"], r.get("processes", "-"), r.get("steps", "-"),
          fmt(r.get("step_s") and 1000 * r["step_s"], ".0f"),
          fmt(r.get("tokens_per_s"), ".0f"), fmt(r.get("loss"), ".3f"), fmt(r.get("peak_gb"), ".1f"),
          fmt(r["wall_s"], ".0f")] if "error" not in r else [r["arch"], r["strategy"], "-", "error: " + r["error"], "",
                                                             "", "", "", ""] for r in fit_rows])
    return f"## bench\n\n{measured}\n\n{ratios}\n\n## fits\n\n{trained}\n"


def main() -> int:
    if os.environ.get(FIT_OUT) and sys.argv[1:2] == ["fit"]:
        fit_one(Path(os.environ[FIT_OUT]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="the CPU path with the tiny model (2 gloo processes)")
    parser.add_argument("--out", default="runs/gpu_check")
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    from mmllm.eval.bench import main as bench_main

    size, device, tiles = ("tiny", "cpu", "1,2") if args.smoke else ("1b", "cuda", "1,6")
    bench = bench_main(["--sizes", size, "--device", device, "--tiles", tiles, "--max_tiles", tiles[-1],
                        "--batch", "4", "--steps", "1" if args.smoke else "3", "--out", str(work / "bench")])
    result = table(bench, fits(args.smoke, work))
    (work / "gpu_check.md").write_text(result)
    print(f"\n{result}\n[gpu_check] {time.perf_counter() - start:.0f} s; wrote {work / 'gpu_check.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
