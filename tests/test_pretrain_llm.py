"""The pretrained tiny LM (`mmllm.train.pretrain_llm`): its corpus, its training, and the folder it leaves, which
must load as any pretrained LM folder does."""
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

import mmllm.train.pretrain_llm as pretrain
from mmllm.backbone import build_llm
from mmllm.config import LLMConfig
from mmllm.processor import IGNORE_INDEX
from mmllm.tokenizer import IMAGE_PAD, load_tokenizer
from mmllm.train.cache import RECIPE_FILE
from mmllm.train.pretrain_llm import (COPY_TASKS, TASKS, LLMRecipe, document, encode, main, pretrain_llm,
                                      pretrained_llm, read_report, text_processor)

# A recipe that trains in a second: a 1-layer LM of width 32, a few held-out documents and prompts.
TINY = LLMRecipe(steps=60, copy_docs=0, batch_size=8, lr=1e-2, warmup_steps=5, heldout_docs=16, heldout_prompts=2,
                 options={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                          "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 256})


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The tiny recipe's folder and its report."""
    folder = tmp_path_factory.mktemp("llm") / "tiny"
    return folder, pretrain_llm(TINY, folder)


def test_the_folder_loads_as_a_pretrained_llm_with_the_weights_it_saved(built):
    folder, _ = built
    tokenizer = load_tokenizer(str(folder))
    byte = load_tokenizer(None)
    assert len(tokenizer) == len(byte) and tokenizer.pad_token == byte.pad_token
    assert tokenizer.convert_tokens_to_ids(IMAGE_PAD) == byte.convert_tokens_to_ids(IMAGE_PAD)
    model = build_llm(LLMConfig(name_or_path=str(folder)), tokenizer)
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)  # nothing was resized on load
    assert same_weights(model.state_dict(), weights(folder))


def test_the_folder_is_what_a_multimodal_model_takes_as_its_llm(built, tiny_config):
    from mmllm.model import MMLLM

    folder, _ = built
    model = MMLLM(tiny_config(llm=LLMConfig(name_or_path=str(folder))))
    assert model.processor.chat_template == model.processor.plain_form  # the form the LM learned on
    saved = weights(folder)
    assert same_weights({k: v for k, v in model.llm.state_dict().items() if k in saved}, saved)


def test_the_saved_tokenizer_encodes_the_processors_texts_as_the_byte_tokenizer_does(built):
    folder, _ = built
    saved, byte = (text_processor(load_tokenizer(name), TINY) for name in (str(folder), None))
    for i in range(len(TASKS)):
        conversation = document(0, i).conversation()
        for proc in (saved, byte):
            assert "".join(text for text, _ in proc.chunks(conversation)).startswith("<s>User: ")
        ours, theirs = saved.encode(conversation, []), byte.encode(conversation, [])
        assert (ours.input_ids, ours.labels) == (theirs.input_ids, theirs.labels)
    structure = f"<Image><tile_1>{IMAGE_PAD}<tile_global_thumbnail></Image><Audio></Audio> é"
    assert saved.text_ids(structure) == byte.text_ids(structure)


def test_training_lowers_the_held_out_loss_and_the_report_says_so(built):
    folder, report = built
    assert report.heldout_loss < 0.7 * report.heldout_loss_start
    assert report.train_loss_last < report.train_loss_first and len(report.train_loss_curve) == 10
    assert set(report.accuracy) == set(TASKS) and all(0 <= a <= 1 for a in report.accuracy.values())
    assert read_report(folder) == report


def test_the_same_recipe_gives_the_same_weights_and_another_seed_other_ones(built, tmp_path):
    folder, _ = built
    pretrain_llm(TINY, tmp_path / "again")
    pretrain_llm(replace(TINY, seed=1), tmp_path / "seed1")
    assert same_weights(weights(tmp_path / "again"), weights(folder))
    assert not same_weights(weights(tmp_path / "seed1"), weights(folder))


def test_documents_are_deterministic_per_seed_and_index_and_every_task_appears():
    assert document(0, 7) == document(0, 7)
    assert document(0, 7) != document(1, 7) and document(0, 7) != document(0, 7, "heldout")
    assert {document(0, i).task for i in range(len(TASKS))} == set(TASKS)
    assert {document(0, i, copy_docs=30).task for i in range(30)} == set(COPY_TASKS)
    assert document(0, 30, copy_docs=30) == document(0, 30)


def test_the_labels_cover_the_assistant_turns_only():
    proc = text_processor(load_tokenizer(None), TINY)
    for i in range(len(TASKS)):
        doc = document(0, i)
        sample = encode(proc, doc, TINY.seq_len)
        answered = [label for label in sample.labels if label != IGNORE_INDEX]
        assert answered == proc.text_ids(doc.answer + proc.tokenizer.eos_token)
        assert sample.labels[-len(answered):] == sample.input_ids[-len(answered):]  # the answer ends the document


def test_bad_recipes_and_documents_are_refused_naming_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="steps"):
        LLMRecipe(steps=0)
    with pytest.raises(ValueError, match="lr"):
        LLMRecipe(lr=0.0)
    with pytest.raises(ValueError, match="stream"):
        document(0, 0, "test")
    with pytest.raises(ValueError, match="seq_len"):
        encode(text_processor(load_tokenizer(None), TINY), document(0, 0), 8)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(FileExistsError, match="empty"):
        pretrain_llm(TINY, tmp_path / "full")


def test_pretrained_llm_builds_once_and_then_finds_the_folder(tmp_path, monkeypatch):
    calls = []

    def counted(recipe, folder):
        calls.append(folder)
        return pretrain_llm(recipe, folder)

    monkeypatch.setattr(pretrain, "pretrain_llm", counted)
    first = pretrained_llm(TINY, root=tmp_path)
    assert pretrained_llm(TINY, root=tmp_path) == first and len(calls) == 1
    assert (first / RECIPE_FILE).is_file() and read_report(first).recipe == TINY


def test_the_command_says_where_the_folder_is_and_how_it_scores(tmp_path, capsys):
    args = ["--root", str(tmp_path), "--steps", "2", "--batch_size", "2", "--heldout_docs", "2",
            "--heldout_prompts", "1", "--copy_docs", "0"]
    report = main(args)
    out = capsys.readouterr().out
    assert f"pretrained LLM: {tmp_path}" in out and "held-out" in out and "chart_value" in out
    assert report.recipe == LLMRecipe(steps=2, batch_size=2, heldout_docs=2, heldout_prompts=1, copy_docs=0)
    with pytest.raises(SystemExit):
        main(["--steps", "0"])
    assert "steps must be at least 1" in capsys.readouterr().err
