import json

import pytest

from mmllm.eval.runner import evaluate
from conftest import text_image


@pytest.fixture
def eval_set(tmp_path):
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


def test_unknown_task_lists_valid_ones(tiny_model, eval_set, tmp_path):
    with pytest.raises(ValueError, match="valid tasks: ocr, chartqa"):
        evaluate(tiny_model, "mmmu", eval_set, tmp_path)
