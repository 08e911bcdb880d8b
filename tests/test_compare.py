import json

import pytest
import torch
import yaml

from mmllm.eval.compare import REPO, compare
from mmllm.eval.compare import main as compare_main
from mmllm.eval.compare_report import variants_section
from mmllm.eval.comparison import DataSet, Run


def test_compare_trains_every_arch_on_the_same_data_and_writes_the_report(tmp_path):
    sets = dict(
        train=[DataSet("ocr", "ocr", n=8, seed=0), DataSet("chart", "chart", n=8, seed=1)],
        val=[],
        test=[DataSet("ocr-test", "ocr", n=8, seed=2, eval="ocr"), DataSet("chart-test", "chart", n=8, seed=3, eval="chartqa")],
    )
    overrides = ["--data.batch_size=4", "--trainer.val_check_interval=null", "--model.processor.tile_tag=1d"]
    table = compare(archs=["nvlm_d", "nvlm_x", "nvlm_h"], max_steps=2, out=str(tmp_path), tile_sweep_batch=1,
                    fit_overrides=overrides, **sets)
    report = tmp_path / "report"
    for name in ("report.md", "metrics.json", "accuracy.png", "loss_curves.png", "decoder_tokens_vs_tiles.png",
                 "step_time_vs_tiles.png", "samples-nvlm_x-ocr-test.png"):
        assert (report / name).is_file(), name
    assert all(f"| {a} |" in table for a in ("nvlm_d", "nvlm_x", "nvlm_h"))
    # One seed: every finding is measured, none can be shown.
    assert "## The paper's findings, here" in table and table.count("| not shown |") == 3
    metrics = json.loads((report / "metrics.json").read_text())
    runs = {r["arch"]: r for r in metrics["runs"]}
    assert set(runs) == {"nvlm_d", "nvlm_x", "nvlm_h"} and all(set(r["scores"]) == {"ocr-test", "chart-test"} for r in runs.values())
    # With 1-D tags, per extra tile D adds tokens + tag, X only the tag, H nothing (the thumbnail alone is in the sequence).
    length = {a: [row["decoder_len"] for row in rows] for a, rows in metrics["tile_sweep"].items()}
    assert [row["tiles"] for row in metrics["tile_sweep"]["nvlm_d"]] == [1, 2, 3, 4, 5, 6]
    for k in range(2, 6):
        grow = {a: length[a][k] - length[a][k - 1] for a in length}
        assert grow["nvlm_d"] > grow["nvlm_x"] > grow["nvlm_h"] == 0
    # The counted step FLOPs grow with the tiles for every arch, and the cost finding is judged on them.
    flops = {a: [row["step_flops"] for row in rows] for a, rows in metrics["tile_sweep"].items()}
    assert all(0 < f[0] < f[-1] for f in flops.values())
    assert "train-step MFLOPs at max tiles" in table


def test_variants_sweep_one_more_axis_and_each_run_keeps_its_own_settings(tmp_path):
    sets = dict(train=[DataSet("ocr", "ocr", n=8, seed=0)], val=[], test=[DataSet("ocr-test", "ocr", n=4, seed=2, eval="ocr")])
    variants = {"learned": ["--model.tile_identity=learned"], "tag": ["--model.tile_identity=tag"]}
    overrides = ["--data.batch_size=4", "--trainer.val_check_interval=null", "--model.processor.tile_tag=1d"]
    table = compare(archs=["nvlm_x"], seeds=[0, 1], max_steps=1, out=str(tmp_path), tile_sweep_batch=0,
                    fit_overrides=overrides, variants=variants, **sets)
    assert "| nvlm_x learned |" in table and "| nvlm_x tag |" in table
    assert "ocr-test CER" in table and " ± " in table  # two seeds: mean ± std and the single runs
    runs = json.loads((tmp_path / "report" / "metrics.json").read_text())["runs"]
    assert sorted((r["variant"], r["seed"]) for r in runs) == [("learned", 0), ("learned", 1), ("tag", 0), ("tag", 1)]
    for variant in variants:
        saved = json.loads((tmp_path / "runs" / f"nvlm_x-{variant}-seed1" / "model" / "config.json").read_text())
        assert saved["mmllm"]["tile_identity"] == variant
    assert "## Each variant against learned" in table and "| nvlm_x | tag | " in table
    # The report is written again from metrics.json alone, to the character, training nothing.
    (tmp_path / "runs").rename(tmp_path / "runs-moved")
    assert compare(archs=["nvlm_x"], seeds=[0, 1], out=str(tmp_path), variants=variants, report_only=True,
                   **sets) == table


def _run(arch: str, variant: str, seed: int, ocr: float, chart: float) -> Run:
    return Run(arch, variant, seed, {"o": ocr, "c": chart}, 1, 1, 1.0, 0.1, None, 1.0)


def test_each_variant_is_measured_against_the_first_per_arch_over_paired_runs():
    test = [DataSet("o", "ocr", eval="ocr"), DataSet("c", "chart", eval="chartqa")]
    runs = [_run("nvlm_d", "two-stage", s, o, 0.5) for s, o in enumerate([0.9, 0.8, 0.7])]
    runs += [_run("nvlm_d", "frozen", s, o, 0.5) for s, o in enumerate([0.6, 0.6, 0.4])]  # -30, -20, -30 points
    section = variants_section(runs, test)
    half = 4.302652729749462 * 5.773502691896258 / 3 ** 0.5  # t(0.975, 2) * sd / sqrt(n)
    assert f"| nvlm_d | frozen | {-80 / 3:+.1f} [{-80 / 3 - half:+.1f}, {-80 / 3 + half:+.1f}], n=3 | +0.0 [+0.0, +0.0], n=3 |" in section
    assert variants_section(runs[:3], test) == ""  # one variant: nothing to measure against


def test_data_seeds_redraw_the_training_sets_and_success_counts_the_runs_that_reach_every_threshold(tmp_path):
    sets = dict(train=[DataSet("ocr", "ocr", n=8, seed=0)], val=[], test=[DataSet("ocr-test", "ocr", n=4, seed=2, eval="ocr")])
    overrides = ["--data.batch_size=4", "--trainer.val_check_interval=null"]
    table = compare(archs=["nvlm_d"], seeds=[0], data_seeds=[0, 1], success={"ocr-test": 0.0}, max_steps=1,
                    out=str(tmp_path), tile_sweep_batch=0, fit_overrides=overrides, **sets)
    assert "## Success rate" in table and "| nvlm_d | 2/2 | 34-100 % | - |" in table
    drawn = [(tmp_path / "data" / name / "train.jsonl").read_text() for name in ("ocr", "ocr-d1")]
    assert drawn[0] != drawn[1]
    runs = json.loads((tmp_path / "report" / "metrics.json").read_text())["runs"]
    assert sorted(r["data_seed"] for r in runs) == [0, 1] and (tmp_path / "runs" / "nvlm_d-d1-seed0").is_dir()


def test_a_success_rate_shows_its_interval_and_the_failed_runs_scores():
    from mmllm.eval.compare_report import success_table, wilson
    from mmllm.eval.comparison import Run

    def run(seed, score):
        return Run("nvlm_x", "", seed, {"ocr-test": score}, 1, 1, 1.0, 0.1, None, 1.0, data_seed=3)

    table = success_table({"nvlm_x": [run(0, 0.95), run(1, 0.5), run(2, 0.99)]}, {"ocr-test": 0.9})
    assert "| nvlm_x | 2/3 | 21-94 % | d3 s1: 50.0 |" in table
    assert wilson(0, 10)[0] == 0.0 and round(wilson(10, 10)[0], 3) == 0.722


def test_success_must_name_test_sets_with_thresholds_that_are_fractions(tmp_path):
    import pytest

    sets = dict(train=[DataSet("ocr", "ocr", n=8)], val=[], test=[DataSet("ocr-test", "ocr", n=4, eval="ocr")])
    for success in ({"ocr": 0.9}, {"ocr-test": 90}):
        with pytest.raises(ValueError, match="thresholds in \\[0, 1\\]"):
            compare(archs=["nvlm_d"], success=success, out=str(tmp_path), **sets)



def test_stages_run_in_turn_each_from_the_weights_the_one_before_ended_with(tmp_path):
    """The paper's protocol: stage 1 trains the connector alone, stage 2 starts from its weights with the LLM
    unfrozen. A middle stage at learning rate 0 must end with exactly the weights it started from."""
    import torch
    from safetensors.torch import load_file

    from mmllm.eval.comparison import Stage

    sets = dict(train=[DataSet("ocr", "ocr", n=8, seed=0)], val=[],
                test=[DataSet("ocr-test", "ocr", n=4, seed=2, eval="ocr", sweep_tiles=True)])
    stages = [Stage("connector", ["--model.stage=pretrain", "--model.train_encoder=false"], max_steps=2),
              Stage("hold", ["--model.stage=sft", "--model.lr=0"], max_steps=1),
              Stage("sft", ["--model.stage=sft"], max_steps=2)]
    overrides = ["--data.batch_size=4", "--trainer.val_check_interval=null"]
    table = compare(archs=["nvlm_x"], out=str(tmp_path), tile_sweep_batch=0, fit_overrides=overrides, stages=stages,
                    curve_every=2, curve_items=2, **sets)
    run = tmp_path / "runs" / "nvlm_x-seed0"
    weights = {stage.name: load_file(run / stage.name / "model" / "model.safetensors") for stage in stages}
    assert weights["hold"].keys() == weights["connector"].keys()
    for key, value in weights["hold"].items():
        assert torch.equal(value, weights["connector"][key]), key
    llm = [k for k in weights["sft"] if k.startswith("llm.") and "cross" not in k]
    assert any(not torch.equal(weights["sft"][k], weights["hold"][k]) for k in llm)  # SFT trains the LLM
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["timing"]["steps"] == 5 and "| nvlm_x |" in table
    # Scored every 2 steps and at each stage's end; FLOPs and time only grow, and a step of the frozen-LLM stage
    # counts fewer FLOPs than one of SFT, which computes the LLM's weight gradients too.
    curve = metrics["runs"][0]["curve"]
    assert [(p["step"], p["stage"]) for p in curve] == [(2, "connector"), (3, "hold"), (4, "sft"), (5, "sft")]
    assert all(set(p["scores"]) == {"ocr-test"} for p in curve)
    flops = [0] + [p["flops"] for p in curve]
    per_step = [b - a for a, b in zip(flops, flops[1:])]
    assert per_step[0] / 2 < per_step[2] / 1 and all(p > 0 for p in per_step)
    assert all(a["seconds"] < b["seconds"] for a, b in zip(curve, curve[1:]))
    assert len(metrics["runs"][0]["tile_scores"]["ocr-test"]) == 6  # tile budgets 1..max_tiles
    assert "## Controls" in table and {"as trained", "images shuffled", "cross-attention off", "one tile"} <= set(
        metrics["runs"][0]["controls"])
    summary = json.loads((run / "tiles" / "1" / "ocr-test" / "summary.json").read_text())
    assert (summary["max_tiles"], summary["n"]) == (1, 2)
    for name in ("quality_vs_steps.png", "quality_vs_flops.png", "quality_vs_time.png", "quality_vs_tiles.png"):
        assert (tmp_path / "report" / name).is_file(), name
    assert "connector: 2 steps then hold: 1 steps then sft: 2 steps" in (tmp_path / "report" / "report.md").read_text()


def test_a_variant_can_bring_its_own_protocol_and_configs_write_variants_either_way(tmp_path, capsys):
    from mmllm.eval.compare import main
    from mmllm.eval.comparison import Stage, Variant

    sets = dict(train=[DataSet("ocr", "ocr", n=8, seed=0)], val=[], test=[DataSet("ocr-test", "ocr", n=4, seed=2, eval="ocr")])
    staged = [Stage("connector", ["--model.stage=pretrain"], max_steps=1), Stage("sft", ["--model.stage=sft"], max_steps=1)]
    frozen_tower = ["--model.train_encoder=false"]
    variants = {"staged": frozen_tower, "scratch": Variant(["--model.train_encoder=true"], [Stage("joint", ["--model.stage=sft"], 3)])}
    compare(archs=["nvlm_d"], out=str(tmp_path), tile_sweep_batch=0, fit_overrides=["--data.batch_size=4"],
            stages=staged, variants=variants, curve_items=0, **sets)
    runs = {r["variant"]: r for r in json.loads((tmp_path / "report" / "metrics.json").read_text())["runs"]}
    assert (tmp_path / "runs" / "nvlm_d-staged-seed0" / "sft" / "model").is_dir()
    assert (tmp_path / "runs" / "nvlm_d-scratch-seed0" / "model").is_dir()  # one stage: no stage folder
    assert runs["scratch"]["trainable"] == runs["scratch"]["params"] and runs["staged"]["trainable"] < runs["staged"]["params"]
    assert "connector: 1 steps then sft: 1 steps; scratch: joint: 3 steps" in (tmp_path / "report" / "report.md").read_text()
    config = tmp_path / "variants.yaml"
    config.write_text("variants:\n  tags: [--model.processor.tile_tag=1d]\n"
                      "  scratch: {args: [--model.train_encoder=true], stages: [{name: joint, max_steps: 5}]}\n")
    with pytest.raises(SystemExit):
        main(["--config", str(config), "--print_config"])
    printed = capsys.readouterr().out
    assert "- --model.processor.tile_tag=1d" in printed and "name: joint" in printed and "max_steps: 5" in printed


def test_parts_are_built_side_by_side_once_and_every_stage_starts_from_them(tmp_path, monkeypatch):
    """The pretrained parts reach each stage as real ones would: the LLM folder as llm.name_or_path, the tower's
    weights file as encoder.pretrained; a second comparison finds them in the cache."""
    from safetensors.torch import load_file

    from mmllm.eval.comparison import Parts, Stage

    monkeypatch.setenv("MMLLM_CACHE", str(tmp_path / "cache"))
    llm = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
           "num_key_value_heads": 1, "max_position_embeddings": 256}
    tower = {"feature_layer": -1, "options": {"embed_dim": 32, "depth": 1, "num_heads": 2, "patch_size": [32, 16]}}
    parts = Parts(llm={"steps": 2, "batch_size": 2, "copy_docs": 0, "heldout_docs": 2, "heldout_prompts": 1,
                       "options": llm},
                  tower={"steps": 2, "batch_size": 8, "chart_renders": 2, "heldout": 4, "candidates": 2,
                         "probe_train": 8, "probe_test": 4, "embed_dim": 16, "text_width": 16, "encoder": tower})
    sets = dict(train=[DataSet("ocr", "ocr", n=8, seed=0)], val=[], test=[DataSet("ocr-test", "ocr", n=4, seed=2, eval="ocr")])
    stages = [Stage("connector", ["--model.stage=pretrain", "--model.train_encoder=false"], max_steps=1)]
    compare(archs=["nvlm_h"], out=str(tmp_path / "a"), tile_sweep_batch=0, fit_overrides=["--data.batch_size=4"],
            stages=stages, parts=parts, curve_items=0, **sets)
    built = sorted(p.name.split("-")[0] for p in (tmp_path / "cache").iterdir() if not p.name.startswith("."))
    assert built == ["llm", "tower"]
    saved = json.loads((tmp_path / "a" / "runs" / "nvlm_h-seed0" / "model" / "config.json").read_text())["mmllm"]
    assert saved["llm"]["name_or_path"].startswith(str(tmp_path / "cache" / "llm-"))
    assert saved["encoder"]["pretrained"].startswith(str(tmp_path / "cache" / "tower-"))
    # Stage 1 froze both parts: the model's tower and LLM are the pretrained ones, bit for bit.
    model = load_file(tmp_path / "a" / "runs" / "nvlm_h-seed0" / "model" / "model.safetensors")
    llm = load_file(next((tmp_path / "cache").glob("llm-*/model.safetensors")))
    assert all(torch.equal(model["llm." + k], v) for k, v in llm.items() if "llm." + k in model)
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*.safetensors")}
    compare(archs=["nvlm_h"], out=str(tmp_path / "b"), tile_sweep_batch=0, fit_overrides=["--data.batch_size=4"],
            stages=stages, parts=parts, curve_items=0, **sets)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*.safetensors")} == stamps


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")
                                        if "archs:" in p.read_text()))
def test_every_shipped_compare_config_parses_with_the_compare_command(name, capsys):
    with pytest.raises(SystemExit) as done:
        compare_main(["--config", str(REPO / "configs" / name), "--print_config"])
    assert done.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["archs"] and printed["test"], name


def test_a_stopped_comparison_goes_on_where_it_was_and_reuses_only_runs_of_the_same_inputs(tmp_path, capsys):
    sets = dict(train=[DataSet("ocr", "ocr", n=8, seed=0)], val=[], test=[DataSet("ocr-test", "ocr", n=4, seed=2, eval="ocr")])
    overrides = ["--data.batch_size=4", "--trainer.val_check_interval=null"]
    kw = dict(archs=["nvlm_d"], seeds=[0, 1], max_steps=1, out=str(tmp_path), tile_sweep_batch=0, **sets)
    def scores() -> list:
        runs = json.loads((tmp_path / "report" / "metrics.json").read_text())["runs"]
        return [(r["seed"], r["scores"], r["losses"]) for r in runs]

    compare(fit_overrides=overrides, **kw)
    first = scores()
    (tmp_path / "runs" / "nvlm_d-seed1" / "run.json").unlink()  # as if stopped during its second run
    capsys.readouterr()
    compare(fit_overrides=overrides, **kw)
    said = capsys.readouterr().out
    assert "nvlm_d-seed0: finished before, reused" in said and "nvlm_d-seed1: finished before" not in said
    assert scores() == first  # the same scores and losses, reused or trained again
    compare(fit_overrides=[*overrides, "--model.lr=0.01"], **kw)
    assert capsys.readouterr().out.count("made from other inputs than this comparison's; training it again") == 2
