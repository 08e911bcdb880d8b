"""`mmllm eval` against the faults it must survive: each ends as one clear error or a named, counted skip."""
import json
import os

import pytest
import torch

from mmllm.cli import main as cli
from mmllm.eval.runner import TASKS, evaluate, score_predictions
from mmllm.jsonl import read_jsonl
from mmllm.train.items import ItemsDataset
from mmllm.train.load import load_model


def write_items(folder, items: list[dict]) -> None:
    (folder / "items.jsonl").write_text("".join(json.dumps(it) + "\n" for it in items))


@pytest.fixture
def eval_set(tmp_path, text_image):
    """Ten readable OCR items in `tmp_path/set`."""
    folder = tmp_path / "set"
    (folder / "images").mkdir(parents=True)
    for i in range(10):
        text_image(f"w{i}").save(folder / "images" / f"{i}.png")
    write_items(folder, [{"id": f"i{i}", "image": f"images/{i}.png", "question": "What text is in the image?",
                          "answers": [f"w{i}"]} for i in range(10)])
    return folder


def items_of(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "items.jsonl").read_text().splitlines()]


def rows_of(out) -> list[dict]:
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def another_model(tiny_config):
    from mmllm.model import MMLLM

    torch.manual_seed(1)
    return MMLLM(tiny_config()).eval()


# 1. A rerun into an existing --out


def test_the_folder_records_what_it_was_started_with(tiny_model, eval_set, tmp_path):
    evaluate(tiny_model, "ocr", eval_set, tmp_path / "out")
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert set(run) == {"checkpoint", "task", "data", "prompt_template", "max_new_tokens", "max_length", "answers",
                        "inputs", "limit", "max_tiles"}
    assert (run["task"], run["data"], run["prompt_template"], run["max_new_tokens"], run["max_length"]) == (
        "ocr", str((eval_set / "items.jsonl").resolve()), "{question}", 32, 4096)
    tiny_model.save_pretrained(tmp_path / "saved")
    evaluate(load_model(tmp_path / "saved"), "ocr", eval_set, tmp_path / "copy")
    assert json.loads((tmp_path / "copy" / "run.json").read_text()) == run  # same weights, same identity


def test_a_rerun_with_another_checkpoint_into_the_same_folder_is_refused(
        tiny_model, eval_set, tmp_path, capsys, tiny_config):
    tiny_model.save_pretrained(tmp_path / "a")
    another_model(tiny_config).save_pretrained(tmp_path / "b")
    args = ["eval", "--task", "ocr", "--data", str(eval_set), "--out", str(tmp_path / "out")]
    assert cli([*args, "--ckpt", str(tmp_path / "a")]) == 0
    before = (tmp_path / "out" / "predictions.jsonl").read_text()
    capsys.readouterr()
    assert cli([*args, "--ckpt", str(tmp_path / "b")]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("mmllm: error: ValueError: ")
    assert "was started with a different checkpoint (" in error
    assert f"pass another --out or delete {tmp_path / 'out'}" in error
    assert (tmp_path / "out" / "predictions.jsonl").read_text() == before
    assert cli([*args, "--ckpt", str(tmp_path / "a")]) == 0  # the same checkpoint still continues


@pytest.mark.parametrize("change, field", [({"template": "Read: {question}"}, "prompt_template"),
                                           ({"max_new_tokens": 5}, "max_new_tokens"),
                                           ({"task": "chartqa"}, "task")])
def test_a_rerun_with_other_settings_into_the_same_folder_is_refused(tiny_model, eval_set, tmp_path, change, field):
    evaluate(tiny_model, "ocr", eval_set, tmp_path / "out", max_new_tokens=4)
    run = (tmp_path / "out" / "run.json").read_text()
    kwargs = {"task": "ocr", "max_new_tokens": 4, **change}
    with pytest.raises(ValueError, match=f"started with a different {field} \\("):
        evaluate(tiny_model, data=eval_set, out=tmp_path / "out", **kwargs)
    assert (tmp_path / "out" / "run.json").read_text() == run


def test_a_smaller_item_set_pointed_at_an_old_folder_is_refused(tiny_model, eval_set, tmp_path):
    evaluate(tiny_model, "ocr", eval_set, tmp_path / "out", max_new_tokens=4)
    (tmp_path / "small").mkdir()
    (tmp_path / "small" / "items.jsonl").write_text("".join(json.dumps({**it, "image": f"../set/{it['image']}"}) + "\n"
                                                            for it in items_of(eval_set)[:4]))
    with pytest.raises(ValueError, match="different data .*; answers "):
        evaluate(tiny_model, "ocr", tmp_path / "small", tmp_path / "out", max_new_tokens=4)


def test_corrected_gold_answers_are_refused(tiny_model, eval_set, tmp_path):
    evaluate(tiny_model, "ocr", eval_set, tmp_path / "out", max_new_tokens=4)
    items = items_of(eval_set)
    items[3]["answers"] = ["corrected"]
    write_items(eval_set, items)
    with pytest.raises(ValueError, match=r"different answers \('[0-9a-f]{16}' there, '[0-9a-f]{16}' now\)"):
        evaluate(tiny_model, "ocr", eval_set, tmp_path / "out", max_new_tokens=4)


def test_predictions_without_a_record_of_what_made_them_are_refused(tiny_model, eval_set, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "predictions.jsonl").write_text(json.dumps({"id": "i0", "prediction": "w0"}) + "\n")
    with pytest.raises(ValueError, match="run.json is missing or unreadable, so what made those predictions is unknown"):
        evaluate(tiny_model, "ocr", eval_set, tmp_path / "out")


def test_only_current_items_are_scored_and_gold_comes_from_the_items_file(tiny_model, eval_set, tmp_path):
    full = evaluate(tiny_model, "ocr", eval_set, tmp_path / "out", max_new_tokens=4)
    rows = rows_of(tmp_path / "out")
    forged = [{**r, "answers": [r["prediction"]]} for r in rows[:5]]  # old rows claiming perfect answers
    strangers = [{"id": f"old{k}", "prediction": "x", "answers": ["x"]} for k in range(20)]
    (tmp_path / "out" / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in forged + strangers))
    again = evaluate(tiny_model, "ocr", eval_set, tmp_path / "out", max_new_tokens=4)
    assert (again["n"], again["generated"], again["score"]) == (10, 5, full["score"])
    assert rows_of(tmp_path / "out") == rows


# 2. Duplicate ids


def test_every_later_duplicate_id_is_a_named_skip_not_a_merge(tiny_model, eval_set, tmp_path):
    items = items_of(eval_set)
    items += [{**items[0], "id": 777}, {**items[1], "id": "777", "answers": ["other"]},
              {**items[2], "answers": ["other"]}] + [{**it, "id": f"j{k}"} for k, it in enumerate(items[3:8])]
    write_items(eval_set, items)  # 18 lines, 16 ids
    summary = evaluate(tiny_model, "ocr", eval_set, tmp_path / "out", max_new_tokens=4)
    assert (summary["n"], summary["skipped"]) == (16, 2)
    where = eval_set / "items.jsonl"
    assert summary["skipped_items"] == [f"{where}:12 (id 777): duplicate id (first at line 11, which is scored)",
                                        f"{where}:13 (id i2): duplicate id (first at line 3, which is scored)"]
    by_id = {r["id"]: r for r in rows_of(tmp_path / "out")}
    assert len(by_id) == 16 and by_id["777"]["answers"] == ["w0"] and by_id["i2"]["answers"] == ["w2"]


def test_duplicate_ids_in_predictions_made_elsewhere_are_skipped_too(tmp_path):
    rows = [{"id": 5, "prediction": "a", "answers": ["a"]}, {"id": "5", "prediction": "b", "answers": ["a"]}]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = score_predictions("ocr", tmp_path / "p.jsonl", tmp_path / "out")
    assert (summary["n"], summary["skipped"], summary["score"]) == (1, 1, 1.0)
    assert summary["skipped_items"] == [f"{tmp_path / 'p.jsonl'}:2 (id 5): duplicate id (first at line 1, which is scored)"]


# 3. Scoring into the folder that holds the input


def test_scoring_predictions_into_their_own_folder_is_refused(tmp_path, capsys):
    (tmp_path / "scored").mkdir()
    src = tmp_path / "scored" / "predictions.jsonl"
    text = json.dumps({"id": "a", "prediction": "x", "answers": ["x"]}) + "\n{cut\n"
    src.write_text(text)
    for given in (src, tmp_path / "scored" / ".." / "scored" / "predictions.jsonl"):
        assert cli(["eval", "--task", "ocr", "--predictions", str(given), "--out", str(tmp_path / "scored")]) == 1
        error = capsys.readouterr().err
        assert error == (f"mmllm: error: ValueError: --predictions {given} is the output file {src}, which scoring "
                         "rewrites; pass another --out\n")
    assert src.read_text() == text


# 4. A malformed media field


def test_an_item_whose_image_is_a_number_is_a_counted_skip(tiny_model, eval_set, tmp_path):
    items = items_of(eval_set)
    items[4]["image"] = 5
    write_items(eval_set, items)
    summary = evaluate(tiny_model, "ocr", eval_set, tmp_path / "out", max_new_tokens=4)
    assert (summary["n"], summary["skipped"]) == (9, 1)
    assert summary["skipped_items"][0].startswith(f"{eval_set / 'items.jsonl'}:5 (id i4): ")


# 5. A predictions file cut inside a UTF-8 character


def test_a_folder_whose_last_prediction_is_cut_mid_character_resumes_and_scores_every_item_once(
        tiny_model, eval_set, tmp_path, monkeypatch):
    full = evaluate(tiny_model, "ocr", eval_set, tmp_path / "full", batch_size=4, max_new_tokens=4)
    lines = (tmp_path / "full" / "predictions.jsonl").read_bytes().splitlines(keepends=True)
    cut = json.dumps({**json.loads(lines[4]), "prediction": "naïve"}, ensure_ascii=False).encode()
    cut = cut[:cut.index("ï".encode()) + 1]  # the first of the character's two bytes, no line end
    part = tmp_path / "part"
    part.mkdir()
    (part / "predictions.jsonl").write_bytes(b"".join(lines[:4]) + cut)
    (part / "run.json").write_bytes((tmp_path / "full" / "run.json").read_bytes())
    generate, calls = tiny_model.generate, []

    def interrupted_after_one_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return generate(*args, **kwargs)

    monkeypatch.setattr(tiny_model, "generate", interrupted_after_one_batch)
    with pytest.raises(KeyboardInterrupt):
        evaluate(tiny_model, "ocr", eval_set, part, batch_size=4, max_new_tokens=4)
    records, bad = read_jsonl(part / "predictions.jsonl", ("id", "prediction"))
    assert [r.id for r in records] == [f"i{i}" for i in range(8)] and bad == []  # appended after a clean line end
    monkeypatch.undo()
    resumed = evaluate(tiny_model, "ocr", eval_set, part, batch_size=4, max_new_tokens=4)
    assert (resumed["generated"], resumed["n"], resumed["skipped"], resumed["score"]) == (2, 10, 0, full["score"])
    assert (part / "predictions.jsonl").read_bytes() == b"".join(lines)


# 6. max_new_tokens


def test_max_new_tokens_zero_is_an_error_not_the_default(tiny_model, eval_set, tmp_path, capsys):
    with pytest.raises(ValueError, match="max_new_tokens must be at least 1, got 0"):
        evaluate(tiny_model, "ocr", eval_set, tmp_path / "out", max_new_tokens=0)
    with pytest.raises(SystemExit) as exit_:
        cli(["eval", "--task", "ocr", "--ckpt", "x", "--data", str(eval_set), "--out", str(tmp_path), "--max_new_tokens", "0"])
    assert exit_.value.code == 2
    assert "argument --max_new_tokens: must be at least 1, got 0" in capsys.readouterr().err
    assert evaluate(tiny_model, "ocr", eval_set, tmp_path / "one", max_new_tokens=1)["max_new_tokens"] == 1


# 7. A file that is not a checkpoint


def test_a_text_file_given_as_checkpoint_is_named_as_not_a_checkpoint(eval_set, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello, I am not a checkpoint\n")
    assert cli(["eval", "--task", "ocr", "--ckpt", str(notes), "--data", str(eval_set), "--out", str(tmp_path / "o")]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert error.startswith(f"mmllm: error: ValueError: {notes} is not a Lightning checkpoint (nor a save_pretrained "
                            "folder): it could not be read (")
    other = tmp_path / "other.ckpt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match="other.ckpt is not a Lightning checkpoint .*: it holds no state_dict and "
                                         "hyper_parameters$"):
        load_model(other)


# 8. Atomic outputs


def test_a_crash_while_writing_the_outputs_leaves_the_previous_ones_whole(tmp_path, monkeypatch):
    src = tmp_path / "p.jsonl"
    src.write_text(json.dumps({"id": "a", "prediction": "x", "answers": ["x"]}) + "\n")
    score_predictions("ocr", src, tmp_path / "out")
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    src.write_text(json.dumps({"id": "b", "prediction": "y", "answers": ["z"]}) + "\n")

    def crash(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        score_predictions("ocr", src, tmp_path / "out")
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before


# 9. What the model is shown, not only ids and answers


@pytest.mark.parametrize("change", ["image", "question"])
def test_a_rerun_with_a_replaced_image_or_an_edited_question_under_the_same_ids_is_refused(
        tiny_model, eval_set, tmp_path, change, text_image):
    evaluate(tiny_model, "ocr", eval_set, tmp_path / "out", max_new_tokens=4)
    if change == "image":
        text_image("other").save(eval_set / "images" / "3.png")
    else:
        items = items_of(eval_set)
        items[3]["question"] = "What word is written?"
        write_items(eval_set, items)
    with pytest.raises(ValueError, match=r"started with a different inputs \('[0-9a-f]{16}' there, '[0-9a-f]{16}' now\)"):
        evaluate(tiny_model, "ocr", eval_set, tmp_path / "out", max_new_tokens=4)


# 10. Answers that are no list of strings


def test_answers_given_as_an_object_are_a_counted_skip_never_scored_against_its_keys(tmp_path):
    rows = [{"id": "a", "prediction": "w0", "answers": {"w0": "gold"}}, {"id": "b", "prediction": "w1", "answers": ["w1"]}]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = score_predictions("ocr", tmp_path / "p.jsonl", tmp_path / "out")
    assert (summary["n"], summary["skipped"], summary["score"]) == (1, 1, 1.0)
    assert summary["skipped_items"] == [f"{tmp_path / 'p.jsonl'}:1 (id a): cannot score: gold answers must be a "
                                        "string or a list of strings, got dict"]


# 11. Nothing scored, a prompt that drops the question


def test_an_eval_that_scores_no_item_exits_non_zero_with_one_line(tmp_path, capsys):
    pretty = tmp_path / "pretty.jsonl"
    pretty.write_text(json.dumps([{"id": "a", "prediction": "x", "answers": ["x"]}], indent=2) + "\n")
    assert cli(["eval", "--task", "ocr", "--predictions", str(pretty), "--out", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err == (
        f"mmllm: error: ValueError: no item was scored (9 skipped; first: {pretty}:1: invalid JSON (Expecting value "
        f"at column 2)); see {tmp_path / 'out' / 'summary.json'}\n")
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["n"] == 0


@pytest.mark.parametrize("prompt, message", [
    ("Read the image.", "prompt template 'Read the image.' must hold {question} and no other field"),
    ("{question} in {language}", "prompt template '{question} in {language}' must hold {question} and no other "
                                 "field; it has {language}"),
])
def test_a_prompt_without_its_question_or_with_another_field_is_refused_before_anything_runs(
        tiny_model, eval_set, tmp_path, capsys, prompt, message):
    with pytest.raises(ValueError) as err:
        evaluate(tiny_model, "ocr", eval_set, tmp_path / "out", template=prompt)
    assert str(err.value) == message and not (tmp_path / "out").exists()
    tiny_model.save_pretrained(tmp_path / "m")
    args = ["eval", "--task", "ocr", "--ckpt", str(tmp_path / "m"), "--data", str(eval_set), "--out", str(tmp_path / "o")]
    assert cli([*args, "--prompt", prompt]) == 1
    assert capsys.readouterr().err == f"mmllm: error: ValueError: {message}\n"


# 12. Inputs that kill an eval


def test_an_image_its_decoder_refuses_is_a_counted_skip(tiny_model, eval_set, tmp_path, text_bomb_png):
    text_bomb_png(eval_set / "images" / "4.png")
    summary = evaluate(tiny_model, "ocr", eval_set, tmp_path / "out", max_new_tokens=4)
    assert (summary["n"], summary["skipped"]) == (9, 1)
    assert summary["skipped_items"] == [
        f"{eval_set / 'items.jsonl'}:5 (id i4): cannot decode image {eval_set / 'images' / '4.png'}: "
        "ValueError: Decompressed data too large for PngImagePlugin.MAX_TEXT_CHUNK"]


def test_a_100000_character_question_is_a_counted_skip_before_it_is_tokenised(tiny_model, eval_set, tmp_path,
                                                                             monkeypatch):
    items = items_of(eval_set)
    items[2]["question"] = "x" * 100_000
    write_items(eval_set, items)
    encode, prompts = tiny_model.processor.encode_prompt, []
    monkeypatch.setattr(tiny_model.processor, "encode_prompt",
                        lambda prompt, *a: prompts.append(len(prompt)) or encode(prompt, *a))
    summary = evaluate(tiny_model, "ocr", eval_set, tmp_path / "out", max_new_tokens=4)
    template = TASKS["ocr"].template
    chars, longest = (len(template.format(question=it["question"])) for it in (items[2], items[0]))
    assert (summary["n"], summary["skipped"], max(prompts)) == (9, 1, longest)  # the long one never encoded
    assert summary["skipped_items"] == [f"{eval_set / 'items.jsonl'}:3 (id i2): {chars} characters of text > "
                                        "max_length 4096 tokens of at most 23 characters each"]


def test_a_prompt_over_max_length_tokens_is_a_skipped_item_naming_its_count(tiny_model, eval_set):
    full = ItemsDataset(eval_set / "items.jsonl", tiny_model.processor, max_length=None)[0]
    n = len(full.sample.input_ids)
    item = ItemsDataset(eval_set / "items.jsonl", tiny_model.processor, max_length=n - 1)[0]
    assert (item.sample, item.error) == (None, f"{eval_set / 'items.jsonl'}:1 (id i0): {n} tokens > max_length {n - 1}")
