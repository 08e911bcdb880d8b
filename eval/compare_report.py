"""The comparison's report: report.md (scores mean ± std over runs, controls, the paper's findings, success
rates, cost as the tile count grows), metrics.json, and PNG plots (scores, loss curves, quality against steps,
FLOPs, time and tiles, sample predictions)."""
from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict
from pathlib import Path

from mmllm.eval.comparison import DataSet, Run
from mmllm.eval.findings import COST as COST_MEASURE, OCR as OCR_MEASURE, paired_effect, verdicts
from mmllm.eval.report import markdown_table, plot_bars, plot_lines, plot_panels
from mmllm.eval.runner import TASKS
from mmllm.jsonl import write_json, write_text_atomic

METRICS = "metrics.json"


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % interval of a success rate k/n (Wilson's: sensible at 0/n and n/n, where few runs are all there is)."""
    centre, half = (k + z * z / 2) / (n + z * z), z * math.sqrt(k * (n - k) / n + z * z / 4) / (n + z * z)
    return max(0.0, centre - half), min(1.0, centre + half)


def success_table(by_arch: dict[str, list[Run]], success: dict[str, float]) -> str:
    """Per arch: runs passing every threshold, the rate's interval, and the failed runs' scores (their spread)."""
    rows = []
    for label, runs in by_arch.items():
        passed = sum(r.passes(success) for r in runs)
        low, high = wilson(passed, len(runs))
        failed = [r for r in runs if not r.passes(success)]
        rows.append([label, f"{passed}/{len(runs)}", f"{100 * low:.0f}-{100 * high:.0f} %",
                     "; ".join(f"d{r.data_seed} s{r.seed}: " + "/".join(f"{100 * r.scores[n]:.1f}" for n in success)
                               for r in failed) or "-"])
    wanted = ", ".join(f"{name} ≥ {100 * t:g} %" for name, t in success.items())
    return markdown_table(["arch", f"runs passing ({wanted})", "95 % interval", "failed runs (data seed, seed: %)"],
                          rows)


def mean_std(values: list[float], pct: bool = True, digits: int = 1) -> str:
    """Mean ± sample std over seeds, then the single runs in brackets, so the spread is visible."""
    k = 100 if pct else 1
    if len(values) == 1:
        return f"{k * values[0]:.{digits}f}"
    each = "/".join(f"{k * v:.{digits}f}" for v in values)
    return f"{k * statistics.mean(values):.{digits}f} ± {k * statistics.stdev(values):.{digits}f} ({each})"


CURVE_AXES = {"step": ("steps", "training steps (all stages)"), "flops": ("flops", "training FLOPs (counted)"),
              "seconds": ("time", "training wall time (s)")}


def mean_curve(runs: list[Run], test_set: str, x: str) -> list[tuple[float, float]]:
    """An arch's curve on one test set: at each scoring point, the runs' mean `x` (step, flops or seconds) and mean
    score (every run of an arch is scored at the same steps)."""
    points = zip(*(r.curve for r in runs))
    return [(statistics.fmean(getattr(p, x) for p in at), statistics.fmean(p.scores[test_set] for p in at))
            for at in points if all(test_set in p.scores for p in at)]


def plot_curves(by_arch: dict[str, list[Run]], test: list[DataSet], report: Path) -> list[str]:
    """Score against steps, counted FLOPs and wall time, a panel per test set; returns the files written."""
    if not any(p.scores for rs in by_arch.values() for r in rs for p in r.curve):
        return []
    written = []
    for x, (name, label) in CURVE_AXES.items():
        panels = {s.name: {a: mean_curve(rs, s.name, x) for a, rs in by_arch.items()} for s in test}
        plot_panels(panels, report / f"quality_vs_{name}.png", label, "score", log_x=x == "flops")
        written.append(f"quality_vs_{name}.png")
    return written


def findings_section(runs: list[Run], test: list[DataSet]) -> str:
    """For each variant: whether each of the paper's findings holds here, with the paired differences behind it
    (OCR: the mean exact match over the OCR test sets; cost: the counted FLOPs of a train step at the most tiles)."""
    ocr = [s.name for s in test if s.eval == "ocr"]
    parts = []
    for variant in dict.fromkeys(r.variant for r in runs):
        measures = {OCR_MEASURE: {}, COST_MEASURE: {}}
        for r in (r for r in runs if r.variant == variant):
            key = (r.data_seed, r.seed)
            if ocr:
                measures[OCR_MEASURE].setdefault(r.arch, {})[key] = 100 * statistics.fmean(r.scores[n] for n in ocr)
            if r.sweep:
                measures[COST_MEASURE].setdefault(r.arch, {})[key] = r.sweep[-1]["step_flops"] / 1e6
        rows = [[v.finding, v.holds, "; ".join(e.describe() for e in v.effects)] for v in verdicts(measures)]
        if rows:
            title = f" ({variant})" if variant else ""
            parts.append(f"\n\n## The paper's findings, here{title}\n\n"
                         + markdown_table(["finding", "holds here?", "paired differences: mean [95 % interval]"], rows)
                         + "\n\nA finding holds when every difference it claims points its way with an interval "
                           "clear of zero; one that points the other way clearly fails; anything else is not shown.")
    return "".join(parts)


def variants_section(runs: list[Run], test: list[DataSet]) -> str:
    """Each variant against the first (the protocol it varies), per arch: the paired difference of the mean score
    of each eval task's test sets, with its 95 % interval over the runs that share a seed and a data seed."""
    variants = list(dict.fromkeys(r.variant for r in runs))
    tasks = list(dict.fromkeys(s.eval for s in test))
    if len(variants) < 2 or not tasks:
        return ""

    def mean_score(run: Run, task: str) -> float:
        return 100 * statistics.fmean(run.scores[s.name] for s in test if s.eval == task)

    rows = []
    for arch in dict.fromkeys(r.arch for r in runs):
        base = {(r.data_seed, r.seed): r for r in runs if r.arch == arch and r.variant == variants[0]}
        for variant in variants[1:]:
            pairs = [(r, base[key]) for r in runs if r.arch == arch and r.variant == variant
                     and (key := (r.data_seed, r.seed)) in base]
            if pairs:
                rows.append([arch, variant] + [
                    paired_effect(variant, variants[0], task, [(mean_score(a, task), mean_score(b, task))
                                                               for a, b in pairs]).value()
                    for task in tasks])
    return (f"\n\n## Each variant against {variants[0]}\n\n"
            + markdown_table(["arch", "variant"] + [f"{task} (mean over its test sets), points: mean [95 % interval]"
                                                    for task in tasks], rows))


def controls_table(by_arch: dict[str, list[Run]], test: list[DataSet]) -> str:
    """Exact match per control (eval.controls) on the first OCR test set, mean over each arch's runs."""
    names = list(dict.fromkeys(c for rs in by_arch.values() for r in rs for c in r.controls))
    if not names:
        return ""
    ocr = next(s.name for s in test if s.eval == "ocr")
    rows = [[a] + [mean_std([r.controls[c] for r in rs if c in r.controls]) if any(c in r.controls for r in rs)
                   else "-" for c in names] for a, rs in by_arch.items()]
    return (f"\n\n## Controls: is it the model or the wiring? (exact match %, {ocr})\n\n"
            + markdown_table(["arch", *names], rows))


def plot_tile_scores(by_arch: dict[str, list[Run]], report: Path) -> list[str]:
    """Score against the tile budget (1..max_tiles), a panel per swept test set; returns the files written."""
    swept = list(dict.fromkeys(name for rs in by_arch.values() for r in rs for name in r.tile_scores))
    if not swept:
        return []
    panels = {name: {a: [(k + 1, statistics.fmean(at)) for k, at in enumerate(zip(*(r.tile_scores[name] for r in rs)))]
                     for a, rs in by_arch.items()} for name in swept}
    plot_panels(panels, report / "quality_vs_tiles.png", "tiles allowed (+ thumbnail when > 1)", "score")
    return ["quality_vs_tiles.png"]


def write_report(runs: list[Run], test: list[DataSet], out: Path, timing: dict,
                 success: dict[str, float] | None = None) -> str:
    """report.md, metrics.json and the plots under `out/report`; returns the tables printed on the console."""
    report = out / "report"
    sweeps = {}  # the first run of each arch (its first variant and seed): the cost table and plots
    for r in runs:
        if r.sweep:
            sweeps.setdefault(r.arch, r.sweep)
    by_arch = {a: [r for r in runs if r.label == a] for a in dict.fromkeys(r.label for r in runs)}
    table = (scores_table(by_arch, test) + controls_table(by_arch, test) + findings_section(runs, test)
             + variants_section(runs, test))
    if success:
        table += "\n\n## Success rate\n\n" + success_table(by_arch, success)
    plot_bars({s.name: {a: statistics.mean(r.scores[s.name] for r in rs) for a, rs in by_arch.items()} for s in test},
              report / "accuracy.png", "score per test set", "score")
    plot_lines({f"{r.label} seed {r.seed}": r.losses for r in runs}, report / "loss_curves.png", "training loss",
               "step", "loss", log=True)
    sweep_table, sweep_plots = cost_section(sweeps, report)
    write_json(report / METRICS, {"runs": [asdict(r) for r in runs], "tile_sweep": sweeps, "timing": timing})
    pictures = ["accuracy.png", "loss_curves.png"] + plot_curves(by_arch, test, report) + plot_tile_scores(
        by_arch, report) + sweep_plots + sorted(p.name for p in report.glob("samples-*.png"))
    write_text_atomic(report / "report.md",
        "# mmllm compare: NVLM-D vs NVLM-X vs NVLM-H\n\n"
        f"Same encoder, LLM, tokenizer, data and seeds; {timing['steps']} steps each ({timing['protocol']}). "
        "Scores are mean ± std "
        "over the runs (seeds, and data seeds) when there is more than one.\n\n" + table + "\n\n## Cost as the tile count grows\n\n"
        + sweep_table + "\n\n" + "".join(f"![{p}]({p})\n\n" for p in pictures)
        + f"Total time {timing['total_s']} s.\n"
    )
    return table


def scores_table(by_arch: dict[str, list[Run]], test: list[DataSet]) -> str:
    """A row per arch (and variant): each test set's score and each OCR set's CER (mean ± std), sizes and costs."""
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
    return markdown_table(header, rows)


def cost_section(sweeps: dict[str, list[dict]], report: Path) -> tuple[str, list[str]]:
    """The tile sweep as a table (decoder tokens, counted step FLOPs, step time per tile count) and its plots."""
    if not sweeps:
        return markdown_table(["tiles"], []), []
    archs = list(sweeps)
    rows = [[k + 1] + [f"{row['decoder_len']} / {row['step_flops'] / 1e9:.3f} / {row['step_s'] * 1000:.0f} ms"
                       for row in (sweeps[a][k] for a in archs)]
            for k in range(len(next(iter(sweeps.values()))))]
    table = markdown_table(["tiles"] + [f"{a}: decoder tokens / step GFLOPs / step time" for a in archs], rows)
    plot_lines({a: [(row["tiles"], row["decoder_len"]) for row in rows_] for a, rows_ in sweeps.items()},
               report / "decoder_tokens_vs_tiles.png", "decoder length", "tiles (+ thumbnail when > 1)", "tokens")
    plot_lines({a: [(row["tiles"], row["step_s"]) for row in rows_] for a, rows_ in sweeps.items()},
               report / "step_time_vs_tiles.png", "train step time (batch 4)", "tiles (+ thumbnail when > 1)", "s")
    return table, ["decoder_tokens_vs_tiles.png", "step_time_vs_tiles.png"]


def read_runs(report: Path) -> tuple[list[Run], dict]:
    """The runs and timing a finished comparison wrote to `report/metrics.json`, so its report can be written again
    (with this code's sections) without training anything."""
    path = report / METRICS
    if not path.is_file():
        raise FileNotFoundError(f"no {METRICS} in {report}: run the comparison first (it writes one when done)")
    metrics = json.loads(path.read_text())
    runs = [Run.from_dict(r) for r in metrics["runs"]]
    return runs, metrics["timing"]
