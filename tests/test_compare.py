import json

from mmllm.eval.compare import DataSet, compare


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
    metrics = json.loads((report / "metrics.json").read_text())
    runs = {r["arch"]: r for r in metrics["runs"]}
    assert set(runs) == {"nvlm_d", "nvlm_x", "nvlm_h"} and all(set(r["scores"]) == {"ocr-test", "chart-test"} for r in runs.values())
    # With 1-D tags, per extra tile D adds tokens + tag, X only the tag, H nothing (the thumbnail alone is in the sequence).
    length = {a: [row["decoder_len"] for row in rows] for a, rows in metrics["tile_sweep"].items()}
    assert [row["tiles"] for row in metrics["tile_sweep"]["nvlm_d"]] == [1, 2, 3, 4, 5, 6]
    for k in range(2, 6):
        grow = {a: length[a][k] - length[a][k - 1] for a in length}
        assert grow["nvlm_d"] > grow["nvlm_x"] > grow["nvlm_h"] == 0


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
