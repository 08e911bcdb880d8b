"""`mmllm compare`: NVLM-D, -X and -H trained and scored under identical conditions.

Same encoder, LLM, tokenizer, data, seeds and step budget; only `--model.arch` differs. Named
`variants` (extra fit arguments, e.g. a tile-tag style) sweep one more axis for every arch, which
is how the paper's ablations are reproduced at small scale. Writes a report folder: report.md
(accuracy mean ± std over seeds, parameters, decoder tokens, step time, peak memory, eval
throughput), metrics.json and PNG plots.
"""
from __future__ import annotations

import shutil
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import lightning as L
import torch

from mmllm.eval.cost import peak_memory_mb, reset_peak_memory, tile_sweep
from mmllm.eval.report import markdown_table, plot_bars, plot_lines, plot_samples
from mmllm.eval.runner import TASKS, evaluate
from mmllm.jsonl import write_json, write_text_atomic
from mmllm.train.cli import run as run_cli
from mmllm.train.items import ItemsDataset
from mmllm.train.synth import synthesize_once

REPO = Path(__file__).resolve().parents[1]
Arch = Literal["nvlm_d", "nvlm_x", "nvlm_h"]


@dataclass
class DataSet:
    """A synthetic set: `eval` names the `mmllm eval` task for test sets."""

    name: str
    task: str
    level: str = "easy"
    n: int = 100
    seed: int = 0
    eval: str | None = None


@dataclass
class Run:
    arch: str
    variant: str
    seed: int
    scores: dict[str, float]
    params: int
    trainable: int
    decoder_tokens: float
    step_s: float
    peak_mb: float | None
    eval_items_per_s: float
    losses: list[tuple[int, float]] = field(default_factory=list)
    cer: dict[str, float] = field(default_factory=dict)  # corpus character error rate of the OCR sets

    @property
    def label(self) -> str:
        return f"{self.arch} {self.variant}".strip()


class LossHistory(L.Callback):
    def __init__(self) -> None:
        self.history: list[tuple[int, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.history.append((trainer.global_step, float(outputs["loss"])))


def synthesise_all(sets: list[DataSet], root: Path, scale: float) -> dict[str, Path]:
    folders = {}
    for s in sets:
        folders[s.name] = root / s.name
        synthesize_once(s.task, folders[s.name], max(8, int(s.n * scale)), seed=s.seed, level=s.level)
    return folders


def train_and_score(arch: str, variant: str, seed: int, fit_configs: list[Path], folders: dict[str, Path], train: list[DataSet],
                    val: list[DataSet], test: list[DataSet], max_steps: int | None, out: Path,
                    overrides: list[str]) -> tuple[Run, object]:
    history = LossHistory()
    args = [
        "fit", *(a for c in fit_configs for a in ("--config", str(c))), f"--model.arch={arch}",
        f"--seed_everything={seed}",
        f"--data.train=[{','.join(str(folders[s.name] / 'train.jsonl') for s in train)}]",
        "--data.synth_task=null", f"--trainer.default_root_dir={out / 'train'}",
    ]
    args += [f"--data.val=[{','.join(str(folders[s.name] / 'train.jsonl') for s in val)}]"] if val else []
    args += ([f"--trainer.max_steps={max_steps}"] if max_steps else []) + overrides
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    reset_peak_memory(device)
    start = time.perf_counter()
    cli = run_cli(args, extra_callbacks=[history])
    elapsed = time.perf_counter() - start
    peak = peak_memory_mb(device)
    module = cli.model
    model = module.model.eval()
    model.save_pretrained(out / "model")
    scores, rates, cer = {}, [], {}
    shutil.rmtree(out / "eval", ignore_errors=True)  # a freshly trained model: earlier predictions are not its own
    for s in test:
        summary = evaluate(model, s.eval, folders[s.name], out / "eval" / s.name, batch_size=16)
        scores[s.name] = summary["score"]
        rates.append(summary["items_per_s"] or 0.0)
        if s.eval == "ocr":
            cer[s.name] = summary["corpus_cer"]
    lengths = _prompt_lengths(model, folders[test[0].name]) if test else [0]
    n_params = sum(p.numel() for p in module.parameters())
    n_train = sum(p.numel() for p in module.parameters() if p.requires_grad)
    run = Run(arch, variant, seed, scores, n_params, n_train, statistics.mean(lengths),
              elapsed / max(1, cli.trainer.global_step), peak, statistics.mean(rates) if rates else 0.0, history.history,
              cer)
    return run, model


def _prompt_lengths(model, folder: Path, limit: int = 32) -> list[int]:
    """Decoder tokens of the first test prompts: what each architecture puts into the sequence."""
    items = ItemsDataset(folder / "items.jsonl", model.processor)
    samples = (items[i]["sample"] for i in range(min(limit, len(items))))
    return [len(s["input_ids"]) for s in samples if s is not None]


def mean_std(values: list[float], pct: bool = True, digits: int = 1) -> str:
    """Mean ± sample std over seeds, then the single runs in brackets, so the spread is visible."""
    k = 100 if pct else 1
    if len(values) == 1:
        return f"{k * values[0]:.{digits}f}"
    each = "/".join(f"{k * v:.{digits}f}" for v in values)
    return f"{k * statistics.mean(values):.{digits}f} ± {k * statistics.stdev(values):.{digits}f} ({each})"


def write_report(runs: list[Run], sweeps: dict[str, list[dict]], test: list[DataSet], out: Path, timing: dict) -> str:
    report = out / "report"
    archs = list(dict.fromkeys(r.arch for r in runs))
    by_arch = {a: [r for r in runs if r.label == a] for a in dict.fromkeys(r.label for r in runs)}
    ocr = [s for s in test if s.eval == "ocr"]
    header = ["arch"] + [f"{s.name} ({TASKS[s.eval].metric}, %{', lower is better' * TASKS[s.eval].lower_is_better})"
                         for s in test] + [f"{s.name} CER" for s in ocr] + [
        "params", "trainable", "decoder tokens", "step s", "peak MB", "eval items/s"]
    rows = []
    for a, rs in by_arch.items():
        peak = [r.peak_mb for r in rs if r.peak_mb is not None]
        rows.append([a] + [mean_std([r.scores[s.name] for r in rs]) for s in test]
                    + [mean_std([r.cer[s.name] for r in rs], pct=False, digits=3) for s in ocr] + [
            f"{rs[0].params:,}", f"{rs[0].trainable:,}", f"{statistics.mean(r.decoder_tokens for r in rs):.0f}",
            f"{statistics.mean(r.step_s for r in rs):.3f}", f"{max(peak):.0f}" if peak else "n/a",
            f"{statistics.mean(r.eval_items_per_s for r in rs):.1f}"])
    table = markdown_table(header, rows)
    sweep_rows = [[k + 1] + [f"{sweeps[a][k]['decoder_len']} / {sweeps[a][k]['step_s'] * 1000:.0f} ms" for a in archs]
                  for k in range(len(next(iter(sweeps.values()))))] if sweeps else []
    sweep_table = markdown_table(["tiles"] + [f"{a}: decoder tokens / step" for a in archs], sweep_rows)
    plot_bars({s.name: {a: statistics.mean(r.scores[s.name] for r in rs) for a, rs in by_arch.items()} for s in test},
              report / "accuracy.png", "score per test set", "score")
    plot_lines({f"{r.label} seed {r.seed}": r.losses for r in runs}, report / "loss_curves.png", "training loss",
               "step", "loss", log=True)
    if sweeps:
        plot_lines({a: [(row["tiles"], row["decoder_len"]) for row in rows_] for a, rows_ in sweeps.items()},
                   report / "decoder_tokens_vs_tiles.png", "decoder length", "tiles (+ thumbnail when > 1)", "tokens")
        plot_lines({a: [(row["tiles"], row["step_s"]) for row in rows_] for a, rows_ in sweeps.items()},
                   report / "step_time_vs_tiles.png", "train step time (batch 4)", "tiles (+ thumbnail when > 1)", "s")
    write_json(report / "metrics.json",
               {"runs": [{k: v for k, v in asdict(r).items() if k != "losses"} for r in runs], "tile_sweep": sweeps,
                "timing": timing})
    pictures = ["accuracy.png", "loss_curves.png"] + (
        ["decoder_tokens_vs_tiles.png", "step_time_vs_tiles.png"] if sweeps else [])
    samples = sorted(p.name for p in report.glob("samples-*.png"))
    write_text_atomic(report / "report.md",
        "# mmllm compare: NVLM-D vs NVLM-X vs NVLM-H\n\n"
        f"Same encoder, LLM, tokenizer, data and seeds; {timing['steps']} steps each. Scores are mean ± std "
        "over seeds when there is more than one.\n\n" + table + "\n\n## Cost as the tile count grows\n\n"
        + sweep_table + "\n\n" + "".join(f"![{p}]({p})\n\n" for p in pictures + samples)
        + f"Total time {timing['total_s']} s.\n"
    )
    return table


def compare(
    fit_config: str | list[str] = "configs/nvlm_d_tiny.yaml",
    archs: list[Arch] = ["nvlm_d", "nvlm_x", "nvlm_h"],  # noqa: B006 (jsonargparse needs a literal default)
    seeds: list[int] = [0],  # noqa: B006
    max_steps: int | None = None,
    train: list[DataSet] | None = None,
    val: list[DataSet] | None = None,
    test: list[DataSet] | None = None,
    out: str = "runs/compare",
    data_scale: float = 1.0,
    tile_sweep_batch: int = 4,
    fit_overrides: list[str] | None = None,
    variants: dict[str, list[str]] | None = None,
) -> str:
    """Train every arch on the same data with every seed, score each on the test sets, write the report.

    Args:
        fit_config: the `mmllm fit` YAML shared by all runs, or a list of YAMLs applied in order (e.g. the
            tiny config + configs/asr_tiny.yaml); relative paths resolve from the repo.
        archs: architectures to compare; only `--model.arch` differs between their runs.
        seeds: one run per arch and seed.
        max_steps: training steps per run (default: the fit config's).
        train: training sets (synthesised, deterministic).
        val: validation sets.
        test: held-out test sets with the eval task that scores them.
        out: output folder (data, runs, report).
        data_scale: multiply every set's size (smoke runs).
        tile_sweep_batch: batch size of the step-time sweep over 1..max tiles (0 skips the sweep).
        fit_overrides: extra `mmllm fit` arguments for every run, e.g. ["--data.batch_size=8"].
        variants: name -> extra `mmllm fit` arguments; every arch and seed runs once per variant (e.g.
            {"1d": ["--model.processor.tile_tag=1d"], "none": ["--model.processor.tile_tag=none"]}).
    """
    t0 = time.perf_counter()
    out_dir = Path(out)
    names = [fit_config] if isinstance(fit_config, str) else fit_config
    configs = [Path(c) if Path(c).is_file() else REPO / c for c in names]
    train, val, test = train or [], val or [], test or []
    folders = synthesise_all(train + val + test, out_dir / "data", data_scale)
    (out_dir / "report").mkdir(parents=True, exist_ok=True)
    print(f"[compare] data ready in {time.perf_counter() - t0:.0f}s under {out_dir / 'data'}")
    runs, sweeps = [], {}
    variants = variants or {"": []}
    for arch in archs:
        for v_index, (variant, extra) in enumerate(variants.items()):
            for seed in seeds:
                run_dir = out_dir / "runs" / "-".join(p for p in (arch, variant, f"seed{seed}") if p)
                run, model = train_and_score(arch, variant, seed, configs, folders, train, val, test, max_steps,
                                             run_dir, (fit_overrides or []) + extra)
                runs.append(run)
                print(f"[compare] {run.label} seed {seed}: "
                      + ", ".join(f"{k} {100 * v:.1f}%" for k, v in run.scores.items()))
                if seed != seeds[0] or v_index:
                    continue
                for s in test:
                    plot_samples(run_dir / "eval" / s.name / "predictions.jsonl", folders[s.name],
                                 out_dir / "report" / f"samples-{arch}-{s.name}.png", title=f"{arch}: {s.name}",
                                 lower_is_better=TASKS[s.eval].lower_is_better)
                if tile_sweep_batch:
                    sweeps[arch] = tile_sweep(model, model.config.processor.max_tiles, tile_sweep_batch)
    steps = max(len(r.losses) for r in runs)
    timing = {"steps": steps, "total_s": round(time.perf_counter() - t0, 1)}
    table = write_report(runs, sweeps, test, out_dir, timing)
    print("\n" + table)
    print(f"\n[compare] {len(runs)} runs in {timing['total_s']:.0f}s; report: {out_dir / 'report' / 'report.md'}")
    return table


def main(argv: list[str]) -> None:
    from jsonargparse import CLI

    CLI(compare, args=argv, as_positional=False)
