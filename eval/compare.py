"""`mmllm compare`: NVLM-D, -X and -H trained and scored under identical conditions.

Same encoder, LLM, tokenizer, data, seeds and step budget; only `--model.arch` differs. Named
`variants` (extra fit arguments, e.g. a tile-tag style) sweep one more axis for every arch, which
is how the paper's ablations are reproduced at small scale. `data_seeds` redraw the training and
validation sets (the test sets stay), and `success` thresholds turn the runs into a success rate per
arch: how reliably a config learns, not only how well its luckiest seed does. Writes a report folder:
report.md (accuracy mean ± std over seeds, success rates, parameters, decoder tokens, step time, peak
memory, eval throughput), metrics.json and PNG plots.
"""
from __future__ import annotations

import math
import shutil
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from mmllm.config import Arch
from mmllm.eval.controls import controls as run_controls
from mmllm.eval.cost import peak_memory_mb, reset_peak_memory, tile_sweep
from mmllm.eval.curves import CurvePoint, TrainingRecord
from mmllm.eval.findings import COST as COST_MEASURE, OCR as OCR_MEASURE, verdicts
from mmllm.eval.report import markdown_table, plot_bars, plot_lines, plot_panels, plot_samples
from mmllm.eval.runner import TASKS, evaluate
from mmllm.jsonl import write_json, write_text_atomic
from mmllm.train.cli import run as run_cli
from mmllm.train.items import ItemsDataset
from mmllm.train.synth import synthesize_once

REPO = Path(__file__).resolve().parents[1]
# Data seed k draws each training/validation set with its own seed + k * this: far from every shipped set's seed.
DATA_SEED_STRIDE = 1000
CONFIG_STEPS = "the fit config's"  # a stage's budget when neither it nor compare sets one


@dataclass
class DataSet:
    """A synthetic set: `eval` names the `mmllm eval` task for test sets; `sweep_tiles` scores a test set's first
    `curve_items` again with each tile budget from 1 to the model's max_tiles (quality against resolution)."""

    name: str
    task: str
    level: str = "easy"
    n: int = 100
    seed: int = 0
    eval: str | None = None
    sweep_tiles: bool = False


@dataclass
class Stage:
    """One training stage of the protocol: its own `mmllm fit` arguments and budget. Every stage after the first
    starts from the weights the one before it ended with (`--model.init_from`, a fresh optimizer and schedule),
    as the paper's stage 2 starts from stage 1, e.g. `{name: connector, args: [--model.stage=pretrain]}` then
    `{name: sft, args: [--model.stage=sft]}`."""

    name: str
    args: list[str] = field(default_factory=list)
    max_steps: int | None = None  # null: compare's max_steps, else the fit config's


@dataclass
class Variant:
    """One more axis of the comparison: `args` go to every stage's `mmllm fit`; `stages` replace compare's protocol
    for this variant's runs (e.g. today's from-scratch joint training: one stage that trains everything).
    In a config, a plain list of arguments is a variant with those `args`."""

    args: list[str] = field(default_factory=list)
    stages: list[Stage] | None = None


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
    data_seed: int = 0
    curve: list[CurvePoint] = field(default_factory=list)  # test scores (first `curve_items`) during training
    tile_scores: dict[str, list[float]] = field(default_factory=dict)  # swept test set -> score at 1..max_tiles
    controls: dict[str, float] = field(default_factory=dict)  # control -> exact match on the first OCR test set
    sweep: list[dict] = field(default_factory=list)  # decoder tokens and train step time at 1..max_tiles tiles

    def passes(self, success: dict[str, float]) -> bool:
        return all(self.scores[name] >= threshold for name, threshold in success.items())

    @property
    def label(self) -> str:
        return f"{self.arch} {self.variant}".strip()


def with_budget(stages: list[Stage], max_steps: int | None) -> list[Stage]:
    """Every stage with a step budget of its own keeps it; the others take compare's `max_steps`."""
    return [replace(stage, max_steps=stage.max_steps or max_steps) for stage in stages]


def protocol_text(stages: list[Stage]) -> str:
    return " then ".join(f"{stage.name}: {stage.max_steps or CONFIG_STEPS} steps" for stage in stages)


def redrawn(sets: list[DataSet], data_seed: int) -> list[DataSet]:
    """The sets drawn again for data seed `data_seed` (0: as given), each under a name of its own."""
    if not data_seed:
        return sets
    return [replace(s, name=f"{s.name}-d{data_seed}", seed=s.seed + DATA_SEED_STRIDE * data_seed) for s in sets]


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


def synthesise_all(sets: list[DataSet], root: Path, scale: float) -> dict[str, Path]:
    folders = {}
    for s in sets:
        folders[s.name] = root / s.name
        synthesize_once(s.task, folders[s.name], max(8, int(s.n * scale)), seed=s.seed, level=s.level)
    return folders


def train_and_score(arch: str, variant: str, seed: int, fit_configs: list[Path], folders: dict[str, Path],
                    train: list[DataSet], val: list[DataSet], test: list[DataSet], stages: list[Stage],
                    out: Path, overrides: list[str], curve: tuple[int, int] = (0, 0)) -> tuple[Run, object]:
    """Trains one arch through every stage in turn, then scores the last stage's model on the test sets.

    `curve` (every, items): the first `items` of each test set are scored every `every` steps and at the end of
    each stage, beside the steps, FLOPs and time spent (eval.curves); (0, 0) scores only at the end."""
    every, items = curve

    def score(model, tag: str) -> dict[str, float]:
        return {s.name: evaluate(model, s.eval, folders[s.name], out / "curve" / tag / s.name, batch_size=16,
                                 limit=items)["score"] for s in test} if items else {}

    record = TrainingRecord(score, every)
    args = [
        "fit", *(a for c in fit_configs for a in ("--config", str(c))), f"--model.arch={arch}",
        f"--seed_everything={seed}",
        f"--data.train=[{','.join(str(folders[s.name] / 'train.jsonl') for s in train)}]",
        "--data.synth_task=null",
    ]
    args += [f"--data.val=[{','.join(str(folders[s.name] / 'train.jsonl') for s in val)}]"] if val else []
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    reset_peak_memory(device)
    for earlier in ("curve", "tiles"):  # scores of an earlier model in this folder
        shutil.rmtree(out / earlier, ignore_errors=True)
    start, weights = time.perf_counter(), None
    for stage in stages:
        stage_dir = out / stage.name if len(stages) > 1 else out
        stage_args = [f"--trainer.default_root_dir={stage_dir / 'train'}", *stage.args, *overrides]
        stage_args += [f"--trainer.max_steps={stage.max_steps}"] if stage.max_steps else []
        stage_args += [f"--model.init_from={weights}"] if weights else []
        record.stage = stage.name
        cli = run_cli(args + stage_args, extra_callbacks=[record])
        module = cli.model
        model = module.model.eval()
        weights = stage_dir / "model"
        model.save_pretrained(weights)
    steps = record.steps
    elapsed = time.perf_counter() - start
    peak = peak_memory_mb(device)
    scores, rates, cer = {}, [], {}
    shutil.rmtree(out / "eval", ignore_errors=True)  # a freshly trained model: earlier predictions are not its own
    for s in test:
        summary = evaluate(model, s.eval, folders[s.name], out / "eval" / s.name, batch_size=16)
        scores[s.name] = summary["score"]
        rates.append(summary["items_per_s"] or 0.0)
        if s.eval == "ocr":
            cer[s.name] = summary["corpus_cer"]
    tile_scores = {s.name: [evaluate(model, s.eval, folders[s.name], out / "tiles" / f"{k}" / s.name, batch_size=16,
                                     limit=items or None, max_tiles=k)["score"]
                            for k in range(1, model.config.processor.max_tiles + 1)] for s in test if s.sweep_tiles}
    ocr = next((s for s in test if s.eval == "ocr"), None)
    controls = {row["control"]: row["exact_match"]
                for row in run_controls(model, folders[ocr.name], batch_size=16, limit=items or None)} if ocr else {}
    lengths = _prompt_lengths(model, folders[test[0].name]) if test else [0]
    n_params = sum(p.numel() for p in module.parameters())
    n_train = sum(p.numel() for p in module.parameters() if p.requires_grad)  # in the last stage
    run = Run(arch, variant, seed, scores, n_params, n_train, statistics.mean(lengths), elapsed / max(1, steps), peak,
              statistics.mean(rates) if rates else 0.0, record.losses, cer, curve=record.points, tile_scores=tile_scores,
              controls=controls)
    return run, model


def _prompt_lengths(model, folder: Path, limit: int = 32) -> list[int]:
    """Decoder tokens of the first test prompts: what each architecture puts into the sequence."""
    items = ItemsDataset(folder / "items.jsonl", model.processor)
    samples = (items[i].sample for i in range(min(limit, len(items))))
    return [len(s.input_ids) for s in samples if s is not None]


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
    (OCR: the mean exact match over the OCR test sets; cost: the train step time at the most tiles)."""
    ocr = [s.name for s in test if s.eval == "ocr"]
    parts = []
    for variant in dict.fromkeys(r.variant for r in runs):
        measures = {OCR_MEASURE: {}, COST_MEASURE: {}}
        for r in (r for r in runs if r.variant == variant):
            key = (r.data_seed, r.seed)
            if ocr:
                measures[OCR_MEASURE].setdefault(r.arch, {})[key] = 100 * statistics.fmean(r.scores[n] for n in ocr)
            if r.sweep:
                measures[COST_MEASURE].setdefault(r.arch, {})[key] = 1000 * r.sweep[-1]["step_s"]
        rows = [[v.finding, v.holds, "; ".join(e.describe() for e in v.effects)] for v in verdicts(measures)]
        if rows:
            title = f" ({variant})" if variant else ""
            parts.append(f"\n\n## The paper's findings, here{title}\n\n"
                         + markdown_table(["finding", "holds here?", "paired differences: mean [95 % interval]"], rows)
                         + "\n\nA finding holds when every difference it claims points its way with an interval "
                           "clear of zero; one that points the other way clearly fails; anything else is not shown.")
    return "".join(parts)


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
    report = out / "report"
    sweeps = {}  # the first run of each arch (its first variant and seed): the cost table and plots
    for r in runs:
        if r.sweep:
            sweeps.setdefault(r.arch, r.sweep)
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
    table += controls_table(by_arch, test) + findings_section(runs, test)
    if success:
        table += "\n\n## Success rate\n\n" + success_table(by_arch, success)
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
    pictures = ["accuracy.png", "loss_curves.png"] + plot_curves(by_arch, test, report) + plot_tile_scores(by_arch, report) + (
        ["decoder_tokens_vs_tiles.png", "step_time_vs_tiles.png"] if sweeps else [])
    samples = sorted(p.name for p in report.glob("samples-*.png"))
    write_text_atomic(report / "report.md",
        "# mmllm compare: NVLM-D vs NVLM-X vs NVLM-H\n\n"
        f"Same encoder, LLM, tokenizer, data and seeds; {timing['steps']} steps each ({timing['protocol']}). "
        "Scores are mean ± std "
        "over the runs (seeds, and data seeds) when there is more than one.\n\n" + table + "\n\n## Cost as the tile count grows\n\n"
        + sweep_table + "\n\n" + "".join(f"![{p}]({p})\n\n" for p in pictures + samples)
        + f"Total time {timing['total_s']} s.\n"
    )
    return table


def compare(
    fit_config: str | list[str] = "configs/nvlm_d_tiny.yaml",
    archs: list[Arch] = ["nvlm_d", "nvlm_x", "nvlm_h"],  # noqa: B006 (jsonargparse needs a literal default)
    seeds: list[int] = [0],  # noqa: B006
    data_seeds: list[int] = [0],  # noqa: B006
    success: dict[str, float] | None = None,
    max_steps: int | None = None,
    train: list[DataSet] | None = None,
    val: list[DataSet] | None = None,
    test: list[DataSet] | None = None,
    out: str = "runs/compare",
    data_scale: float = 1.0,
    tile_sweep_batch: int = 4,
    fit_overrides: list[str] | None = None,
    variants: dict[str, list[str] | Variant] | None = None,
    stages: list[Stage] | None = None,
    curve_every: int = 0,
    curve_items: int = 50,
) -> str:
    """Train every arch on the same data with every seed, score each on the test sets, write the report.

    Args:
        fit_config: the `mmllm fit` YAML shared by all runs, or a list of YAMLs applied in order (e.g. the
            tiny config + configs/asr_tiny.yaml); relative paths resolve from the repo.
        archs: architectures to compare; only `--model.arch` differs between their runs.
        seeds: one run per arch and seed (the order the data is seen in, the initialisation).
        data_seeds: one run per arch, seed and data seed: data seed k > 0 draws every training and validation
            set again (seed + k * DATA_SEED_STRIDE); the test sets stay.
        success: test set -> threshold (0..1), e.g. {"ocr-easy-test": 0.9}: the report adds each arch's rate of
            runs reaching every threshold, its 95 % interval and the failed runs' scores.
        max_steps: training steps per run (default: the fit config's).
        train: training sets (synthesised, deterministic).
        val: validation sets.
        test: held-out test sets with the eval task that scores them.
        out: output folder (data, runs, report).
        data_scale: multiply every set's size (smoke runs).
        tile_sweep_batch: batch size of the step-time sweep over 1..max tiles (0 skips the sweep).
        fit_overrides: extra `mmllm fit` arguments for every run, e.g. ["--data.batch_size=8"].
        variants: name -> a `Variant` (or its argument list); every arch and seed runs once per variant (e.g.
            {"1d": ["--model.processor.tile_tag=1d"], "none": ["--model.processor.tile_tag=none"]}), in every stage.
        stages: the training protocol, run in order for every arch, seed and variant (see `Stage`); default: one
            stage, the fit config as it is.
        curve_every: score the first `curve_items` items of every test set each this many steps (counted over
            all stages) and at the end of each stage, beside the training FLOPs and time spent: the quality
            curves of the report. 0: at the end of each stage only.
        curve_items: items per test set in those scorings (0: no curve).
    """
    t0 = time.perf_counter()
    out_dir = Path(out)
    names = [fit_config] if isinstance(fit_config, str) else fit_config
    configs = [Path(c) if Path(c).is_file() else REPO / c for c in names]
    train, val, test = train or [], val or [], test or []
    unknown = sorted(set(success or {}) - {s.name for s in test})
    if unknown or not all(0 <= t <= 1 for t in (success or {}).values()):
        raise ValueError(f"success must map test sets ({[s.name for s in test]}) to thresholds in [0, 1], got "
                         f"{success}")
    drawn = {k: (redrawn(train, k), redrawn(val, k)) for k in data_seeds}
    folders = synthesise_all([*{s.name: s for t, v in drawn.values() for s in t + v}.values(), *test],
                             out_dir / "data", data_scale)
    (out_dir / "report").mkdir(parents=True, exist_ok=True)
    print(f"[compare] data ready in {time.perf_counter() - t0:.0f}s under {out_dir / 'data'}")
    runs = []
    variants = {name: v if isinstance(v, Variant) else Variant(list(v)) for name, v in (variants or {"": []}).items()}
    stages = with_budget(stages or [Stage("train")], max_steps)
    for arch in archs:
        for v_index, (variant, spec) in enumerate(variants.items()):
            for data_seed in data_seeds:
                for seed in seeds:
                    parts = (arch, variant, f"d{data_seed}" if data_seed else "", f"seed{seed}")
                    run_dir = out_dir / "runs" / "-".join(p for p in parts if p)
                    run, model = train_and_score(arch, variant, seed, configs, folders, *drawn[data_seed], test,
                                                 with_budget(spec.stages, max_steps) if spec.stages else stages, run_dir,
                                                 (fit_overrides or []) + spec.args,
                                                 (curve_every, curve_items))
                    run.data_seed = data_seed
                    if tile_sweep_batch:  # every run's, so the cost findings have an interval over the seeds
                        run.sweep = tile_sweep(model, model.config.processor.max_tiles, tile_sweep_batch)
                    runs.append(run)
                    print(f"[compare] {run.label}{f' data seed {data_seed}' if data_seed else ''} seed {seed}: "
                          + ", ".join(f"{k} {100 * v:.1f}%" for k, v in run.scores.items()))
                    if seed != seeds[0] or data_seed != data_seeds[0] or v_index:
                        continue
                    for s in test:
                        plot_samples(run_dir / "eval" / s.name / "predictions.jsonl", folders[s.name],
                                     out_dir / "report" / f"samples-{arch}-{s.name}.png", title=f"{arch}: {s.name}",
                                     lower_is_better=TASKS[s.eval].lower_is_better)
    steps = max(len(r.losses) for r in runs)
    timing = {"steps": steps, "total_s": round(time.perf_counter() - t0, 1),
              "protocol": protocol_text(stages) + "".join(f"; {name}: {protocol_text(with_budget(v.stages, max_steps))}"
                                                          for name, v in variants.items() if v.stages)}
    table = write_report(runs, test, out_dir, timing, success)
    print("\n" + table)
    print(f"\n[compare] {len(runs)} runs in {timing['total_s']:.0f}s; report: {out_dir / 'report' / 'report.md'}")
    return table


def main(argv: list[str]) -> None:
    from jsonargparse import CLI

    CLI(compare, args=argv, as_positional=False)
