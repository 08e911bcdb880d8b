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

import json
import multiprocessing
import os
import shutil
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import torch
import yaml

from mmllm.config import Arch, EncoderConfig
from mmllm.eval.compare_report import read_runs, write_report
from mmllm.eval.comparison import DataSet, Parts, Run, Stage, Variant, protocol_text, redrawn, with_budget
from mmllm.eval.controls import controls as run_controls
from mmllm.eval.cost import peak_memory_mb, reset_peak_memory, tile_sweep
from mmllm.eval.curves import TrainingRecord
from mmllm.eval.report import plot_samples
from mmllm.eval.runner import TASKS, evaluate
from mmllm.jsonl import write_json, write_text_atomic
from mmllm.train.cli import run as run_cli
from mmllm.train.items import ItemsDataset
from mmllm.train.synth import synthesize_once

REPO = Path(__file__).resolve().parents[1]


def part_config(parts: Parts, out: Path) -> list[Path]:
    """The pretrained parts `parts` asks for, built (or found in the cache), as a fit config file of their own
    (`out`) to go after the fit configs; none when the fit config's own parts are kept."""
    from mmllm.train import pretrain_llm, pretrain_tower
    from mmllm.train.cache import is_built, part_folder

    recipes = {}
    if parts.llm is not None:
        recipes["llm"] = pretrain_llm.LLMRecipe(**parts.llm)
    if parts.tower is not None:
        recipe = dict(parts.tower)
        if isinstance(recipe.get("encoder"), dict):
            recipe["encoder"] = EncoderConfig(**recipe["encoder"])
        recipes["tower"] = pretrain_tower.TowerRecipe(**recipe)
    if not recipes:
        return []
    made = {"llm": (pretrain_llm.pretrained_llm, pretrain_llm.SOURCES),
            "tower": (pretrain_tower.pretrained_tower, pretrain_tower.SOURCES)}
    folders = {name: part_folder(name, recipe, made[name][1]) for name, recipe in recipes.items()}
    missing = {name: (made[name][0], recipe) for name, recipe in recipes.items() if not is_built(folders[name])}
    if missing:
        folders.update(built_side_by_side(missing))
    model: dict = {}
    if "llm" in folders:
        model["llm"] = {"name_or_path": str(folders["llm"])}
    if "tower" in folders:
        model["encoder"] = asdict(pretrain_tower.encoder_config(folders["tower"]))
    write_text_atomic(out, yaml.safe_dump({"model": model}, sort_keys=False))
    return [out]


def built_side_by_side(builds: dict[str, tuple]) -> dict[str, Path]:
    """Each `(build, recipe)` run in a process of its own, all at once, the cores shared out between them: the
    parts are single-process trainings of tiny models, so two of them on two cores take about the time of one."""
    threads = max(1, (os.cpu_count() or 1) // len(builds))
    with ProcessPoolExecutor(len(builds), mp_context=multiprocessing.get_context("spawn"),
                             initializer=torch.set_num_threads, initargs=(threads,)) as pool:
        futures = {name: pool.submit(build, recipe) for name, (build, recipe) in builds.items()}
        return {name: future.result() for name, future in futures.items()}


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
    start = time.perf_counter()
    module = fit_stages(args, stages, out, overrides, record)
    elapsed, peak = time.perf_counter() - start, peak_memory_mb(device)
    model = module.model
    run = Run(arch, variant, seed, {}, sum(p.numel() for p in module.parameters()),
              sum(p.numel() for p in module.parameters() if p.requires_grad),  # in the last stage
              statistics.mean(_prompt_lengths(model, folders[test[0].name]) if test else [0]),
              elapsed / max(1, record.steps), peak, 0.0, record.losses, curve=record.points)
    score_run(run, model, test, folders, out, items)
    return run, model


def fit_stages(args: list[str], stages: list[Stage], out: Path, overrides: list[str], record: TrainingRecord):
    """`mmllm fit` once per stage, each from the model the one before it saved; returns the last stage's module
    (its model in eval mode)."""
    weights = None
    for stage in stages:
        stage_dir = out / stage.name if len(stages) > 1 else out
        stage_args = [f"--trainer.default_root_dir={stage_dir / 'train'}", *stage.args, *overrides]
        stage_args += [f"--trainer.max_steps={stage.max_steps}"] if stage.max_steps else []
        stage_args += [f"--model.init_from={weights}"] if weights else []
        record.stage = stage.name
        module = run_cli(args + stage_args, extra_callbacks=[record]).model
        module.model.eval()
        weights = stage_dir / "model"
        module.model.save_pretrained(weights)
    return module


def score_run(run: Run, model, test: list[DataSet], folders: dict[str, Path], out: Path, items: int) -> None:
    """Fills `run`'s scores: every test set in full, the swept ones again at each tile budget (their first `items`),
    and the controls on the first OCR test set."""
    rates = []
    shutil.rmtree(out / "eval", ignore_errors=True)  # a freshly trained model: earlier predictions are not its own
    for s in test:
        summary = evaluate(model, s.eval, folders[s.name], out / "eval" / s.name, batch_size=16)
        run.scores[s.name] = summary["score"]
        rates.append(summary["items_per_s"] or 0.0)
        if s.eval == "ocr":
            run.cer[s.name] = summary["corpus_cer"]
    run.eval_items_per_s = statistics.mean(rates) if rates else 0.0
    run.tile_scores = {s.name: [evaluate(model, s.eval, folders[s.name], out / "tiles" / f"{k}" / s.name,
                                         batch_size=16, limit=items or None, max_tiles=k)["score"]
                                for k in range(1, model.config.processor.max_tiles + 1)]
                       for s in test if s.sweep_tiles}
    ocr = next((s for s in test if s.eval == "ocr"), None)
    run.controls = {row["control"]: row["exact_match"]
                    for row in run_controls(model, folders[ocr.name], batch_size=16, limit=items or None)} if ocr else {}


def _prompt_lengths(model, folder: Path, limit: int = 32) -> list[int]:
    """Decoder tokens of the first test prompts: what each architecture puts into the sequence."""
    items = ItemsDataset(folder / "items.jsonl", model.processor)
    samples = (items[i].sample for i in range(min(limit, len(items))))
    return [len(s.input_ids) for s in samples if s is not None]


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
    parts: Parts | None = None,
    report_only: bool = False,
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
        tile_sweep_batch: batch size of the step-cost sweep (time and counted FLOPs) over 1..max tiles (0 skips the sweep).
        fit_overrides: extra `mmllm fit` arguments for every run, e.g. ["--data.batch_size=8"].
        variants: name -> a `Variant` (or its argument list); every arch and seed runs once per variant (e.g.
            {"1d": ["--model.processor.tile_tag=1d"], "none": ["--model.processor.tile_tag=none"]}), in every stage.
        stages: the training protocol, run in order for every arch, seed and variant (see `Stage`); default: one
            stage, the fit config as it is.
        curve_every: score the first `curve_items` items of every test set each this many steps (counted over
            all stages) and at the end of each stage, beside the training FLOPs and time spent: the quality
            curves of the report. 0: at the end of each stage only.
        curve_items: items per test set in those scorings (0: no curve).
        parts: the pretrained parts the project makes (`Parts`), built before the first run and cached; default:
            the fit config's own parts.
        report_only: write the report of the comparison finished under `out` again, from its metrics.json, with
            this version's report sections; nothing is trained or scored.

    A run whose folder under `out` records it finished from the same inputs is reused, not trained again: a
    stopped comparison goes on where it was (`finished_run`).
    """
    t0 = time.perf_counter()
    out_dir = Path(out)
    names = [fit_config] if isinstance(fit_config, str) else fit_config
    configs = [Path(c) if Path(c).is_file() else REPO / c for c in names]
    train, val, test = train or [], val or [], test or []
    check_success(success, test)
    if report_only:
        runs, timing = read_runs(out_dir / "report")
        return _reported(runs, test, out_dir, timing, success)
    drawn = {k: (redrawn(train, k), redrawn(val, k)) for k in data_seeds}
    folders = synthesise_all([*{s.name: s for t, v in drawn.values() for s in t + v}.values(), *test],
                             out_dir / "data", data_scale)
    (out_dir / "report").mkdir(parents=True, exist_ok=True)
    print(f"[compare] data ready in {time.perf_counter() - t0:.0f}s under {out_dir / 'data'}")
    variants = {name: v if isinstance(v, Variant) else Variant(list(v)) for name, v in (variants or {"": []}).items()}
    variant_parts = {name: v.parts if v.parts is not None else parts or Parts() for name, v in variants.items()}
    part_configs = {name: part_config(variant_parts[name], out_dir / "parts" / f"{name or 'parts'}.yaml")
                    for name in variants}
    if any(part_configs.values()):
        print(f"[compare] pretrained parts ready in {time.perf_counter() - t0:.0f}s: "
              + ", ".join(str(c) for cs in part_configs.values() for c in cs))
    stages = with_budget(stages or [Stage("train")], max_steps)
    protocols = {name: with_budget(v.stages, max_steps) if v.stages else stages for name, v in variants.items()}
    runs = []
    for arch in archs:
        for v_index, (variant, spec) in enumerate(variants.items()):
            for data_seed in data_seeds:
                for seed in seeds:
                    label = (arch, variant, f"d{data_seed}" if data_seed else "", f"seed{seed}")
                    run_dir = out_dir / "runs" / "-".join(p for p in label if p)
                    inputs = {"arch": arch, "variant": variant, "seed": seed, "data_seed": data_seed,
                              "fit_configs": [c.read_text() for c in configs], "parts": asdict(variant_parts[variant]),
                              "train": [asdict(s) for s in drawn[data_seed][0]],
                              "val": [asdict(s) for s in drawn[data_seed][1]], "test": [asdict(s) for s in test],
                              "stages": [asdict(s) for s in protocols[variant]],
                              "args": (fit_overrides or []) + spec.args, "curve": [curve_every, curve_items],
                              "tile_sweep_batch": tile_sweep_batch}
                    run = finished_run(run_dir, inputs) or made_run(run_dir, inputs, configs + part_configs[variant],
                                                                    folders)
                    runs.append(run)
                    print(f"[compare] {run.label}{f' data seed {data_seed}' if data_seed else ''} seed {seed}: "
                          + ", ".join(f"{k} {100 * v:.1f}%" for k, v in run.scores.items()))
                    if not v_index and seed == seeds[0] and data_seed == data_seeds[0]:
                        plot_first_samples(arch, run_dir, test, folders, out_dir / "report")
    timing = {"steps": max(len(r.losses) for r in runs), "total_s": round(time.perf_counter() - t0, 1),
              "protocol": protocol_text(stages) + "".join(f"; {name}: {protocol_text(protocols[name])}"
                                                          for name, v in variants.items() if v.stages)}
    return _reported(runs, test, out_dir, timing, success)


def _reported(runs: list[Run], test: list[DataSet], out_dir: Path, timing: dict,
              success: dict[str, float] | None) -> str:
    table = write_report(runs, test, out_dir, timing, success)
    print("\n" + table)
    print(f"\n[compare] {len(runs)} runs in {timing['total_s']:.0f}s; report: {out_dir / 'report' / 'report.md'}")
    return table


RUN_FILE = "run.json"  # a finished run's record and the inputs it was made from


def made_run(run_dir: Path, inputs: dict, fit_configs: list[Path], folders: dict[str, Path]) -> Run:
    """The run `inputs` describe, trained, scored and swept, then recorded in `run_dir` (`finished_run`)."""
    sets = {key: [DataSet(**s) for s in inputs[key]] for key in ("train", "val", "test")}
    run, model = train_and_score(inputs["arch"], inputs["variant"], inputs["seed"], fit_configs, folders,
                                 sets["train"], sets["val"], sets["test"], [Stage(**s) for s in inputs["stages"]],
                                 run_dir, inputs["args"], tuple(inputs["curve"]))
    run.data_seed = inputs["data_seed"]
    if inputs["tile_sweep_batch"]:  # every run's, so the cost findings have an interval over the seeds
        run.sweep = tile_sweep(model, model.config.processor.max_tiles, inputs["tile_sweep_batch"])
    write_json(run_dir / RUN_FILE, {"inputs": inputs, "run": asdict(run)})
    return run


def finished_run(run_dir: Path, inputs: dict) -> Run | None:
    """The run recorded in `run_dir` when it was made from the same `inputs` (configs, parts' recipes, data sets,
    stages, arguments, seeds), so a comparison that was stopped goes on where it was; None otherwise. The code
    is not part of the inputs: after changing it, delete a run's folder to train it again."""
    path = run_dir / RUN_FILE
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    if record.get("inputs") != json.loads(json.dumps(inputs)):
        print(f"[compare] {run_dir.name}: made from other inputs than this comparison's; training it again")
        return None
    print(f"[compare] {run_dir.name}: finished before, reused ({path})")
    return Run.from_dict(record["run"])


def check_success(success: dict[str, float] | None, test: list[DataSet]) -> None:
    unknown = sorted(set(success or {}) - {s.name for s in test})
    if unknown or not all(0 <= t <= 1 for t in (success or {}).values()):
        raise ValueError(f"success must map test sets ({[s.name for s in test]}) to thresholds in [0, 1], got "
                         f"{success}")


def plot_first_samples(arch: str, run_dir: Path, test: list[DataSet], folders: dict[str, Path], report: Path) -> None:
    """Each test set's first predictions beside their images, for an arch's first run."""
    for s in test:
        plot_samples(run_dir / "eval" / s.name / "predictions.jsonl", folders[s.name],
                     report / f"samples-{arch}-{s.name}.png", title=f"{arch}: {s.name}",
                     lower_is_better=TASKS[s.eval].lower_is_better)


def main(argv: list[str]) -> None:
    from jsonargparse import CLI

    CLI(compare, args=argv, as_positional=False)
