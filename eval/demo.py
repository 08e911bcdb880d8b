"""`mmllm demo`: the main job on the embedded default, end to end on a CPU with nothing downloaded.

Synthesise OCR and chart-QA data, train the tiny NVLM-D of configs/nvlm_d_tiny.yaml, evaluate on
held-out synthetic test sets (easy and hard), and write a report folder.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import lightning as L

from mmllm.eval.report import markdown_table, plot_loss, plot_samples
from mmllm.eval.runner import evaluate
from mmllm.train.cli import run as run_cli
from mmllm.train.synth import synthesize

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "nvlm_d_tiny.yaml"

# (name, synth task, level, n, seed): the training mix and the held-out test sets, seeds disjoint.
TRAIN_SETS = [("ocr-easy", "ocr", "easy", 2000, 0), ("chart-easy", "chart", "easy", 1000, 10)]
VAL_SETS = [("ocr-easy-val", "ocr", "easy", 64, 1), ("chart-easy-val", "chart", "easy", 32, 11)]
TEST_SETS = [
    ("ocr-easy-test", "ocr", "easy", 200, 2, "ocr"),
    ("ocr-hard-test", "ocr", "hard", 100, 3, "ocr"),
    ("chart-easy-test", "chart", "easy", 100, 12, "chartqa"),
    ("chart-hard-test", "chart", "hard", 100, 13, "chartqa"),
]


class LossHistory(L.Callback):
    def __init__(self) -> None:
        self.history: list[tuple[int, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.history.append((trainer.global_step, float(outputs["loss"])))


def scale(sets: list[tuple], factor: float) -> list[tuple]:
    return [(s[0], s[1], s[2], max(8, int(s[3] * factor)), *s[4:]) for s in sets]


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="mmllm demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/demo", help="output folder (data, checkpoints, report)")
    parser.add_argument("--max_steps", type=int, default=None, help="training steps (default: the config's)")
    parser.add_argument("--data_scale", type=float, default=1.0, help="multiply every dataset size (for smoke runs)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    t0 = time.perf_counter()

    data = out / "data"
    for name, task, level, n, seed, *_ in scale(TRAIN_SETS + VAL_SETS + TEST_SETS, args.data_scale):
        if not (data / name / "items.jsonl").is_file():
            synthesize(task, data / name, n, seed=seed, level=level)
    t_data = time.perf_counter() - t0
    print(f"[demo] data ready in {t_data:.0f}s under {data}")

    history = LossHistory()
    fit_args = [
        "fit", "--config", str(CONFIG),
        f"--data.train=[{','.join(str(data / s[0] / 'train.jsonl') for s in TRAIN_SETS)}]",
        f"--data.val=[{','.join(str(data / s[0] / 'train.jsonl') for s in VAL_SETS)}]",
        "--data.synth_task=null",
        f"--trainer.default_root_dir={out / 'train'}",
    ] + ([f"--trainer.max_steps={args.max_steps}"] if args.max_steps else [])
    t1 = time.perf_counter()
    cli = run_cli(fit_args, extra_callbacks=[history])
    t_train = time.perf_counter() - t1
    model = cli.model.model.eval()
    model.save_pretrained(out / "model")

    report = out / "report"
    report.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, task, level, n, seed, eval_task in scale(TEST_SETS, args.data_scale):
        summary = evaluate(model, eval_task, data / name, out / "eval" / name, batch_size=16)
        results[name] = summary
        plot_samples(out / "eval" / name / "predictions.jsonl", data / name, report / f"samples-{name}.png", title=name)
    plot_loss(history.history, report / "loss_curve.png")

    rows = []
    for name, s in results.items():
        extra = f"CER {s['corpus_cer']:.3f}" if "corpus_cer" in s else ""
        rows.append((name, s["metric"], f"{100 * s['score']:.1f} %", s["n"], s["skipped"], extra))
    table = markdown_table(("test set", "metric", "score", "n", "skipped", "also"), rows)
    timing = {"data_s": round(t_data, 1), "train_s": round(t_train, 1), "total_s": round(time.perf_counter() - t0, 1),
              "steps": cli.trainer.global_step}
    (report / "metrics.json").write_text(json.dumps({"results": results, "timing": timing}, indent=2))
    (report / "report.md").write_text(
        f"# mmllm demo: tiny NVLM-D ({model.config.arch}) on synthetic OCR and chart QA\n\n{table}\n\n"
        f"Trained {timing['steps']} steps in {timing['train_s']} s; total {timing['total_s']} s.\n\n"
        "![loss](loss_curve.png)\n" + "".join(f"\n![{n}](samples-{n}.png)\n" for n in results)
    )
    print("\n" + table)
    print(f"\n[demo] trained {timing['steps']} steps in {timing['train_s']:.0f}s, total {timing['total_s']:.0f}s")
    print(f"[demo] report: {report / 'report.md'} (metrics.json, loss_curve.png, samples-*.png); model: {out / 'model'}")
