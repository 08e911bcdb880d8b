import json

import pytest
import torch

from mmllm.eval.runner import evaluate


@pytest.fixture
def eval_set(tmp_path, text_image):
    (tmp_path / "images").mkdir()
    items = []
    for i in range(10):
        text_image(f"w{i}", size=(128, 32) if i % 2 else (64, 64)).save(tmp_path / "images" / f"{i}.png")
        items.append({"id": f"i{i}", "image": f"images/{i}.png", "question": "What text is in the image?",
                      "answers": [f"w{i}"]})
    items.append({"id": "gone", "image": "images/missing.png", "question": "q", "answers": ["a"]})
    items.append({"id": "noanswer", "image": "images/0.png", "question": "q", "answers": []})
    (tmp_path / "items.jsonl").write_text("\n".join(json.dumps(it) for it in items) + "\n{bad json\n")
    return tmp_path


def test_results_do_not_depend_on_batch_size(tiny_model, eval_set, tmp_path):
    one = evaluate(tiny_model, "ocr", eval_set, tmp_path / "bs1", batch_size=1)
    eight = evaluate(tiny_model, "ocr", eval_set, tmp_path / "bs8", batch_size=8)
    assert (tmp_path / "bs1" / "predictions.jsonl").read_text() == (tmp_path / "bs8" / "predictions.jsonl").read_text()
    assert one["score"] == eight["score"] and one["corpus_cer"] == eight["corpus_cer"]


def test_bad_items_are_skipped_and_counted(tiny_model, eval_set, tmp_path):
    summary = evaluate(tiny_model, "ocr", eval_set, tmp_path / "out", batch_size=4)
    assert summary["n"] == 10 and summary["skipped"] == 3
    reasons = " | ".join(summary["skipped_items"])
    assert "invalid JSON" in reasons and "(id gone): image not found" in reasons and "(id noanswer): cannot score" in reasons
    assert summary["prompt_template"] == "{question}" and summary["max_new_tokens"] == 32


def test_a_limit_scores_the_first_items_exactly_as_the_full_run_does(tiny_model, eval_set, tmp_path):
    full = evaluate(tiny_model, "ocr", eval_set, tmp_path / "full", batch_size=4)
    part = evaluate(tiny_model, "ocr", eval_set, tmp_path / "part", batch_size=4, limit=3)
    assert part["n"] == 3 and part["generated"] == 3 and part["limit"] == 3
    rows = lambda name: (tmp_path / name / "predictions.jsonl").read_text().splitlines()  # noqa: E731
    assert rows("part") == rows("full")[:3]
    with pytest.raises(ValueError, match="different limit"):
        evaluate(tiny_model, "ocr", eval_set, tmp_path / "part", batch_size=4)
    assert full["n"] == 10


def test_fewer_tiles_shorten_the_prompt_and_the_lone_tile_keeps_the_global_views_row(tiny_config, eval_set, tmp_path):
    from mmllm.model import MMLLM

    torch.manual_seed(0)
    model = MMLLM(tiny_config(arch="nvlm_x")).eval()  # learned tile identity: a row per tile and the global view
    one = model.processor.with_max_tiles(1)
    wide = model.processor.load_image(eval_set / "images" / "1.png")  # 128x32: four tiles + thumbnail when allowed
    assert [seg.slot for seg in model.processor.encode_prompt("Read it.", [wide]).kv] == [0, 1, 2, 3, 6]
    assert [seg.slot for seg in one.encode_prompt("Read it.", [wide]).kv] == [6]
    with pytest.raises(ValueError, match="max_tiles must be 1..6"):
        model.processor.with_max_tiles(7)
    summary = evaluate(model, "ocr", eval_set, tmp_path / "one", batch_size=4, max_tiles=1)
    assert summary["max_tiles"] == 1 and summary["n"] == 10


def test_unknown_task_lists_valid_ones(tiny_model, eval_set, tmp_path):
    with pytest.raises(ValueError, match="valid tasks: ocr, chartqa"):
        evaluate(tiny_model, "mmmu", eval_set, tmp_path)


def test_an_interrupted_run_continues_from_its_predictions(tiny_model, eval_set, tmp_path):
    full = evaluate(tiny_model, "ocr", eval_set, tmp_path / "full", batch_size=4)
    lines = (tmp_path / "full" / "predictions.jsonl").read_text().splitlines()
    (tmp_path / "part").mkdir()
    (tmp_path / "part" / "predictions.jsonl").write_text("\n".join(lines[:4]) + "\n")
    (tmp_path / "part" / "run.json").write_text((tmp_path / "full" / "run.json").read_text())
    resumed = evaluate(tiny_model, "ocr", eval_set, tmp_path / "part", batch_size=4)
    assert resumed["generated"] == 8 and resumed["n"] == full["n"] == 10 and resumed["score"] == full["score"]
    key = lambda text: sorted(text.splitlines())  # noqa: E731
    assert key((tmp_path / "part" / "predictions.jsonl").read_text()) == key("\n".join(lines))


def test_scoring_predictions_made_elsewhere(tmp_path):
    from mmllm.eval.runner import score_predictions

    rows = [
        {"id": "a", "prediction": "Hello!", "answers": ["Hello"], "ignore_punctuation": True},
        {"id": "b", "prediction": "hello", "answers": ["Hello"]},
        {"id": "c", "prediction": "x", "answers": []},
    ]
    src = tmp_path / "preds.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    summary = score_predictions("ocr", src, tmp_path / "out")
    assert (summary["n"], summary["skipped"], summary["score"]) == (2, 1, 0.5)
    scored = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert [(r["id"], r["score"]) for r in scored] == [("a", 1.0), ("b", 0.0)] and scored[1]["cer"] == 0.2


def test_ocrbench_summary_counts_categories(tmp_path):
    from mmllm.eval.runner import score_predictions

    rows = [
        {"id": "1", "prediction": "the CAT sat", "answers": ["cat"], "dataset": "IIIT5K", "category": "Regular Text Recognition"},
        {"id": "2", "prediction": "dog", "answers": ["cat"], "dataset": "IIIT5K", "category": "Regular Text Recognition"},
    ]
    src = tmp_path / "p.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows))
    summary = score_predictions("ocrbench", src, tmp_path / "o")
    assert summary["final_score"] == 1 and summary["category_counts"]["Regular Text Recognition"] == 1


def test_several_checkpoints_make_one_table(tiny_model, eval_set, tmp_path):
    from mmllm.eval.runner import main

    tiny_model.save_pretrained(tmp_path / "a" / "model")
    tiny_model.save_pretrained(tmp_path / "b" / "model")
    main(["--task", "ocr", "--ckpt", str(tmp_path / "a" / "model"), "--ckpt", str(tmp_path / "b" / "model"),
          "--data", str(eval_set), "--out", str(tmp_path / "out"), "--batch_size", "4"])
    table = (tmp_path / "out" / "table.md").read_text()
    assert "| a-model |" in table and "| b-model |" in table and (tmp_path / "out" / "scores.png").is_file()
    scores = [json.loads((tmp_path / "out" / n / "summary.json").read_text())["score"] for n in ("a-model", "b-model")]
    assert scores[0] == scores[1]  # the same weights score the same


def test_checkpoint_table_shows_ocrbench_categories(tmp_path):
    from mmllm.eval.runner import checkpoint_table

    base = {"task": "ocrbench", "metric": "ocrbench", "n": 2, "skipped": 0}
    summaries = {"a": {**base, "score": 0.5, "category_counts": {"Regular Text Recognition": 1, "Digit String Recognition": 0}},
                 "b": {**base, "score": 1.0, "category_counts": {"Regular Text Recognition": 1, "Digit String Recognition": 1}}}
    table = checkpoint_table(summaries, tmp_path)
    assert "| a | 50.0 | 2 | 0 | 0 | 1 |" in table and "| b | 100.0 | 2 | 0 | 1 | 1 |" in table
    assert (tmp_path / "categories.png").is_file() and (tmp_path / "scores.png").is_file()
