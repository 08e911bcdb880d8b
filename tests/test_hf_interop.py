"""A saved model as transformers users expect it: the Auto classes, dtype and device_map, push_to_hub, a real
processor, chat templates and generation configs. Tiny random models and a byte tokenizer: no downloads."""
import json
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file, save_model
from transformers import (AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor, GenerationConfig,
                          PreTrainedModel)

from mmllm.config import AudioConfig, EncoderConfig
from mmllm.encoders import build_encoder
from mmllm.hf import MMLLMHFConfig
from mmllm.model import MMLLM
from mmllm.processor import IGNORE_INDEX, MMLLMProcessor
from mmllm.sample import Sample, SampleError
from mmllm.tokenizer import load_tokenizer

AUDIO = AudioConfig(max_seconds=4, factor=4, options={"d_model": 32, "encoder_layers": 1, "encoder_attention_heads": 2,
                                                      "encoder_ffn_dim": 64})
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CONVERSATION = [{"from": "human", "value": "<image>\nWhat text?"}, {"from": "gpt", "value": "abc"},
                {"from": "human", "value": "And now?"}, {"from": "gpt", "value": "de"}]


def chatml_tokenizer():
    tok = load_tokenizer(None)
    tok.add_tokens(["<|im_start|>", "<|im_end|>"], special_tokens=True)
    tok.chat_template = CHATML
    return tok


@pytest.fixture
def build(tiny_config):
    """`build(tokenizer=None, **overrides)`: the seeded tiny model, with `tokenizer` if given."""

    def make(tokenizer=None, **overrides) -> MMLLM:
        torch.manual_seed(0)
        return MMLLM(tiny_config(**overrides), tokenizer=tokenizer).eval()

    return make


@pytest.fixture
def prompt(text_image):
    """`prompt(model)`: a batch of one question about one image, for `model`."""

    def batch(model):
        return model.processor.collate([model.processor.encode_prompt("What text?", [text_image("ab12")])])

    return batch


def text_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


# -- 1. Auto classes, dtype, device_map, push_to_hub, safety ------------------------------------------------


@pytest.mark.parametrize("first", ["mmllm", "transformers"])
def test_import_mmllm_loads_no_torch_yet_the_auto_classes_then_load_a_saved_folder(tmp_path, first, build):
    build().save_pretrained(tmp_path)
    autos = "from transformers import AutoConfig, AutoModel, AutoProcessor\n"
    imports = {"mmllm": f"import mmllm\nassert 'torch' not in sys.modules\n{autos}",
               "transformers": f"{autos}import mmllm\n"}[first]
    loads = ", ".join(f"type({auto}.from_pretrained(sys.argv[1])).__name__" for auto in ("AutoConfig", "AutoModel",
                                                                                        "AutoProcessor"))
    script = f"import sys\n{imports}print({loads})"
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["MMLLMHFConfig", "MMLLM", "MMLLMProcessor"]


@pytest.mark.parametrize("auto", [AutoModel, AutoModelForImageTextToText])
def test_the_auto_model_classes_load_a_saved_folder_to_the_same_outputs(tmp_path, auto, build, prompt):
    model = build(arch="nvlm_h")  # a thumbnail in the sequence, the tiles through cross-attention
    model.save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), MMLLMHFConfig)
    loaded = auto.from_pretrained(tmp_path)
    batch = prompt(model)
    assert type(loaded) is MMLLM
    assert torch.equal(loaded(batch).logits, model(batch).logits)


def test_bfloat16_on_a_device_map_loads_exactly_the_cast_weights(tmp_path, build, prompt):
    model = build(arch="nvlm_x")
    model.save_pretrained(tmp_path)
    loaded = MMLLM.from_pretrained(tmp_path, dtype=torch.bfloat16, device_map="cpu")
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    saved = model.state_dict()
    assert all(torch.equal(t, saved[k].to(t.dtype)) for k, t in loaded.state_dict().items() if k in saved)
    assert loaded(prompt(loaded)).logits.dtype == torch.bfloat16


def test_building_through_transformers_keeps_each_parts_own_initialisation(tiny_config):
    config = tiny_config(arch="nvlm_x")
    torch.manual_seed(0)
    model = MMLLM(config)
    torch.manual_seed(0)
    tower = build_encoder(config.encoder)
    assert all(torch.equal(a, b) for a, b in zip(model.encoder.state_dict().values(), tower.state_dict().values()))


def test_a_tower_whose_constructor_computes_unsaved_buffers_loads_to_the_same_outputs(tmp_path, build, prompt):
    """timm's relative-position ViT keeps its position index out of its state dict; transformers rebuilds a
    loaded model on the meta device and could not recompute it, so the saved folder holds it."""
    encoder = EncoderConfig(model="vit_relpos_small_patch16_224", feature_layer=-1,
                            options={"embed_dim": 32, "depth": 1, "num_heads": 2, "patch_size": [16, 4]})
    model = build(encoder=encoder)
    model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert "encoder.model.blocks.0.attn.rel_pos.relative_position_index" in f.keys()
    batch = prompt(model)
    assert torch.equal(MMLLM.from_pretrained(tmp_path)(batch).logits, model(batch).logits)


def test_weights_that_do_not_fill_the_model_are_refused(tmp_path, build):
    build().save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["projector.0.weight"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"do not fill the model exactly: \{'missing_keys': \['projector.0.weight'\]"):
        MMLLM.from_pretrained(tmp_path)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_weights_holding_nan_or_inf_are_refused_on_load_naming_the_tensor(tmp_path, value, build, tiny_config):
    from mmllm.train.load import load_model
    from mmllm.train.module import MMLLMModule, ModuleConfig

    build().save_pretrained(tmp_path / "folder")
    weights = load_file(tmp_path / "folder" / "model.safetensors")
    weights["projector.0.weight"].view(-1)[:3] = value
    save_file(weights, tmp_path / "folder" / "model.safetensors", metadata={"format": "pt"})
    n = weights["projector.0.weight"].numel()
    damaged = "the weights are damaged (a diverged run or a corrupt file)"
    with pytest.raises(ValueError) as err:
        MMLLM.from_pretrained(tmp_path / "folder")
    assert str(err.value) == f"{tmp_path / 'folder'}: weight projector.0.weight holds 3 NaN/inf value(s) of {n}; {damaged}"
    module = MMLLMModule(ModuleConfig(encoder=tiny_config().encoder, llm=tiny_config().llm))
    state = module.state_dict()
    state["model.projector.0.weight"].view(-1)[5] = value
    torch.save({"state_dict": state, "hyper_parameters": dict(module.hparams)}, tmp_path / "run.ckpt")
    with pytest.raises(ValueError) as err:
        load_model(tmp_path / "run.ckpt")
    assert str(err.value) == f"{tmp_path / 'run.ckpt'}: weight projector.0.weight holds 1 NaN/inf value(s) of {n}; {damaged}"


@pytest.mark.parametrize("where, value, message", [
    (("mmllm", "processor"), "abc", "mmllm.processor must be a mapping of ProcessorConfig fields, got str 'abc'"),
    (("mmllm", "processor", "max_tiles"), "6", "mmllm.processor.max_tiles must be int, got str '6'"),
    (("mmllm", "encoder", "pretrained"), 3, "mmllm.encoder.pretrained must be bool or str, got int 3"),
    (("mmllm", "audio"), [], "mmllm.audio must be a mapping of AudioConfig fields or null, got list []"),
    (("llm_config",), "x", "llm_config must be a mapping (the LLM's own config), got str"),
])
def test_a_config_json_field_of_the_wrong_type_is_one_error_naming_the_file_and_the_field(
        tmp_path, where, value, message, build):
    build().save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    parent = meta
    for key in where[:-1]:
        parent = parent[key]
    parent[where[-1]] = value
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError) as err:
        MMLLM.from_pretrained(tmp_path)
    assert str(err.value) == f"{tmp_path / 'config.json'}: {message}"


@pytest.mark.parametrize("file, text, reason", [
    ("tokenizer.json", '{"version": ', "tokenizer.json is not valid JSON (Expecting value: line 1 column 13 (char 12))"),
    ("tokenizer_config.json", "\xff", "tokenizer_config.json is not valid JSON ("),
    ("tokenizer.json", '{"version": "1.0", "model": 5}', "tokenizer.json is not a tokenizer `tokenizers` can read ("),
])
def test_a_corrupt_tokenizer_file_is_one_error_naming_which_file_of_the_folder(tmp_path, file, text, reason, build):
    build().save_pretrained(tmp_path)
    (tmp_path / file).write_text(text)
    with pytest.raises(ValueError) as err:
        MMLLM.from_pretrained(tmp_path)
    assert str(err.value).startswith(f"cannot load the tokenizer of {tmp_path}: {reason}")


def test_push_to_hub_is_transformers_own_and_uploads_the_processor_with_the_model(monkeypatch, build):
    import transformers.utils.hub as hub

    class Repo:
        repo_id = "someone/tiny"

    uploaded = []
    monkeypatch.setattr(hub, "hf_api", lambda: type("Api", (), {"create_repo": lambda *a, **k: Repo()})())
    monkeypatch.setattr(hub, "create_and_tag_model_card", lambda *a, **k: type("Card", (), {"save": lambda *a: None})())
    monkeypatch.setattr(MMLLM, "_upload_modified_files",
                        lambda self, folder, *a, **k: uploaded.extend(p.name for p in Path(folder).iterdir()))
    assert MMLLM.push_to_hub is PreTrainedModel.push_to_hub
    build().push_to_hub("someone/tiny")
    assert {"config.json", "generation_config.json", "model.safetensors", "processor_config.json",
            "tokenizer.json", "tokenizer_config.json"} <= set(uploaded)


def test_a_folder_saved_before_the_transformers_config_still_loads(tmp_path, build, prompt):
    """The earlier layout: config.json with only "mmllm" and "llm_config", weights by safetensors, tokenizer."""
    model = build(arch="nvlm_x")
    meta = {"mmllm": model.config.mmllm.to_dict(), "llm_config": model.llm.config.to_dict()}
    (tmp_path / "config.json").write_text(json.dumps(meta, default=str))
    save_model(model, str(tmp_path / "model.safetensors"))
    model.tokenizer.save_pretrained(tmp_path)
    loaded = MMLLM.from_pretrained(tmp_path)
    batch = prompt(model)
    assert torch.equal(loaded(batch).logits, model(batch).logits)
    assert loaded.generation_config.to_dict() == model.generation_config.to_dict()


# -- 2. The processor ------------------------------------------------------------------------------------


def encodings_equal(a: Sample, b: Sample) -> bool:
    pairs = [(getattr(a, f.name), getattr(b, f.name)) for f in fields(Sample)]
    return all(torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y for x, y in pairs)


def test_auto_processor_gives_our_processor_which_encodes_exactly_as_the_models(tmp_path, build, text_image):
    model = build(chatml_tokenizer(), audio=AUDIO)
    model.save_pretrained(tmp_path)
    processor = AutoProcessor.from_pretrained(tmp_path)
    assert type(processor) is MMLLMProcessor and processor.chat_template == CHATML
    settings = json.loads((tmp_path / "processor_config.json").read_text())
    assert settings["config"]["max_tiles"] == 6 and settings["config"]["tile_tag"] == "1d"
    assert settings["audio"] == {"n_mels": 80, "max_seconds": 4, "frames_per_token": 8}
    wave = (0.3 * np.sin(np.arange(24000) / 5)).astype(np.float32)  # 1.5 s: 150 frames -> 19 tokens
    turns = [{"from": "human", "value": "<image>\n<audio>\nRead and transcribe."}, {"from": "gpt", "value": "ab"}]
    ours, theirs = (p.encode(turns, [text_image("ab12")], audio=[wave]) for p in (model.processor, processor))
    assert encodings_equal(ours, theirs)
    assert ours.input_ids.count(processor.image_token_id) == 5 * 4 + 19  # 4x1 grid + thumbnail, then the clip


def test_auto_processor_never_runs_the_folders_own_tokenizer_code(tmp_path, monkeypatch, build):
    build().save_pretrained(tmp_path)
    ran = tmp_path / "RAN"  # transformers would import the file from its module cache, not from here
    (tmp_path / "evil.py").write_text(f"from pathlib import Path\nPath({str(ran)!r}).write_text('ran')\n")
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config.update(tokenizer_class="EvilTokenizer", auto_map={"AutoTokenizer": ["evil.EvilTokenizer", None]})
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    asked = []
    monkeypatch.setattr("builtins.input", lambda prompt="": asked.append(prompt) or "y")
    with pytest.raises(ValueError, match="trust_remote_code"):
        AutoProcessor.from_pretrained(tmp_path)  # a terminal would ask; `input` here would answer "y"
    assert not asked and not ran.exists()


def test_a_processor_saved_on_its_own_round_trips(tmp_path, build, text_image):
    processor = build(chatml_tokenizer(), arch="nvlm_x").processor
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert loaded.to_dict() == processor.to_dict()
    image = text_image("abc")
    assert encodings_equal(loaded.encode(CONVERSATION, [image]), processor.encode(CONVERSATION, [image]))


# -- 3. Chat templates -----------------------------------------------------------------------------------


def test_a_chat_template_frames_the_turns_and_the_labels_cover_exactly_the_assistant_turns(build, text_image):
    tok = chatml_tokenizer()
    proc = build(tok).processor
    image = text_image("abc")
    sample = proc.encode(CONVERSATION, [image])
    pixels, grid = proc.tiles(image)
    pieces = [("<|im_start|>user\n", False), (proc.image_layout(len(pixels), grid, 0).ids, False),
              ("\nWhat text?<|im_end|>\n<|im_start|>assistant\n", False), ("abc<|im_end|>", True),
              ("\n<|im_start|>user\nAnd now?<|im_end|>\n<|im_start|>assistant\n", False), ("de<|im_end|>", True),
              ("\n", False)]
    ids = [text_ids(tok, p) if isinstance(p, str) else p for p, _ in pieces]
    assert sample.input_ids == [i for part in ids for i in part]
    assert sample.labels == [i if answer else IGNORE_INDEX for part, (_, answer) in zip(ids, pieces) for i in part]


def test_with_a_chat_template_the_eval_prompt_is_the_training_sequence_up_to_the_answer(build, text_image):
    proc = build(chatml_tokenizer()).processor
    image = text_image("abc")
    trained = proc.encode(CONVERSATION[:2], [image])
    asked = proc.encode_prompt("What text?", [image])  # the marker goes first, as in the conversation
    first_answer = next(i for i, label in enumerate(trained.labels) if label != IGNORE_INDEX)
    assert asked.input_ids == trained.input_ids[:first_answer]
    assert proc.tokenizer.decode(trained.input_ids[first_answer:]) == "abc<|im_end|>\n"


def test_without_a_chat_template_the_plain_form_is_unchanged(build, text_image):
    proc = build().processor
    tok, image = proc.tokenizer, text_image("abc")
    sample = proc.encode(CONVERSATION[:2], [image])
    pixels, grid = proc.tiles(image)
    asked = [tok.bos_token_id, *text_ids(tok, "User: "), *proc.image_layout(len(pixels), grid, 0).ids,
             *text_ids(tok, "\nWhat text?"), *text_ids(tok, "\nAssistant: ")]
    answer = text_ids(tok, "abc") + [tok.eos_token_id]
    assert sample.input_ids == asked + answer
    assert sample.labels == [IGNORE_INDEX] * len(asked) + answer


def test_a_template_that_rewrites_earlier_turns_is_refused(build, text_image):
    tok = chatml_tokenizer()
    tok.chat_template = "{% for m in messages %}{% if loop.last %}[last]{% endif %}{{ m['content'] }}\n{% endfor %}"
    with pytest.raises(SampleError, match="renders earlier turns differently"):
        build(tok).processor.encode(CONVERSATION, [text_image("abc")])


# -- 4. Generation configs -------------------------------------------------------------------------------


def test_a_passed_generation_config_decides_the_length(build, prompt):
    model = build()
    batch = prompt(model)
    out = model.generate(batch, generation_config=GenerationConfig(max_new_tokens=4))
    assert out.shape == (1, 4)
    assert torch.equal(out, model.generate(batch, max_new_tokens=4))


def test_the_saved_generation_config_round_trips_and_is_what_the_loaded_model_generates_with(tmp_path, build, prompt):
    model = build()
    model.generation_config.max_new_tokens = 3
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "generation_config.json").read_text())["max_new_tokens"] == 3
    loaded = MMLLM.from_pretrained(tmp_path)
    assert loaded.generation_config.to_dict() == model.generation_config.to_dict()
    batch = prompt(model)
    out = loaded.generate(batch)
    assert out.shape == (1, 3) and torch.equal(out, model.generate(batch))
    assert loaded.generate(batch, max_new_tokens=5).shape == (1, 5)  # a keyword still wins


# -- 5. transformers' calls: processor(...), model(**inputs), the pipeline, added tokens --------------------

QUESTIONS = ["What text?", "Read it"]


@pytest.fixture
def images(text_image):
    """`images()`: fresh images for the two QUESTIONS."""

    def make() -> list:
        return [text_image("ab12"), text_image("zz")]

    return make


@pytest.mark.parametrize("arch", ["nvlm_d", "nvlm_x", "nvlm_h"])
def test_the_processor_call_gives_keywords_the_model_generates_from_exactly_as_answer_does(arch, build, images):
    model = build(arch=arch)
    inputs = model.processor(text=QUESTIONS, images=images(), return_tensors="pt")
    assert {"input_ids", "attention_mask", "pixel_values", "media_layout"} <= set(inputs)
    asked = model.generate(**inputs, max_new_tokens=4)
    assert [model.processor.decode(row) for row in asked.tolist()] == model.answer(QUESTIONS, images(),
                                                                                   max_new_tokens=4)
    direct = model.processor.collate([model.processor.encode_prompt(q, [im]) for q, im in zip(QUESTIONS, images())])
    assert torch.equal(model(**inputs).logits, model(direct).logits)


def test_a_prompt_the_chat_template_rendered_is_taken_as_it_stands_and_a_bare_question_is_framed(build, images):
    processor = build().processor
    messages = [{"role": "user", "content": [{"type": "image", "image": images()[0]},
                                             {"type": "text", "text": "What text?"}]}]
    rendered = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert rendered == f"{processor.tokenizer.bos_token}User: <image>\nWhat text?\nAssistant: "
    from_text = processor(text=rendered, images=images()[:1])["input_ids"]
    assert torch.equal(from_text, processor(text="What text?", images=images()[:1])["input_ids"])
    assert torch.equal(from_text, processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))


def test_apply_chat_template_tokenized_is_the_training_encoding_with_labels_on_the_answers(build, images):
    processor = build(chatml_tokenizer()).processor
    messages = [{"role": "user", "content": [{"type": "image", "image": images()[0]},
                                             {"type": "text", "text": "What text?"}]},
                {"role": "assistant", "content": "abc"}]
    got = processor.apply_chat_template(messages, tokenize=True, return_dict=True)
    want = processor.collate([processor.encode(CONVERSATION[:2], images()[:1])])
    assert torch.equal(got["input_ids"], want.input_ids) and torch.equal(got["labels"], want.labels)


def test_a_message_image_by_url_is_refused_naming_the_message_since_nothing_is_fetched(build):
    processor = build().processor
    messages = [{"role": "user", "content": [{"type": "image", "url": "https://example.com/a.png"}]}]
    with pytest.raises(SampleError, match="message 0: image 'https://example.com/a.png' is not a local file"):
        processor.apply_chat_template(messages, tokenize=True)


def test_a_saved_processor_carries_the_plain_form_as_its_chat_template(tmp_path, build):
    build().save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert (tmp_path / "chat_template.jinja").is_file()
    text = loaded.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])
    assert text == "".join(chunk for chunk, _ in loaded.plain_chunks(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], False))


@pytest.mark.parametrize("arch", ["nvlm_d", "nvlm_x"])
def test_the_image_text_to_text_pipeline_answers_plain_prompts_batches_and_chat_messages_as_answer_does(
        tmp_path, arch, build, images):
    from transformers import pipeline

    model = build(arch=arch)
    model.save_pretrained(tmp_path)
    pipe = pipeline("image-text-to-text", model=str(tmp_path))
    expected = model.answer(QUESTIONS, images(), max_new_tokens=4)
    one = pipe(images=images()[0], text=QUESTIONS[0], max_new_tokens=4, return_full_text=False)
    assert one[0]["generated_text"] == expected[0]
    batch = pipe(images=images(), text=QUESTIONS, max_new_tokens=4, return_full_text=False)
    assert [row["generated_text"] for row in batch] == expected
    chat = [{"role": "user", "content": [{"type": "image", "image": images()[1]}, {"type": "text", "text": "Read it"}]}]
    assert pipe(text=chat, max_new_tokens=4, return_full_text=False)[0]["generated_text"] == expected[1]


def test_answer_takes_one_image_per_question_as_a_flat_list_or_a_question_alone(build, images):
    model = build(arch="nvlm_h")
    nested = model.answer(QUESTIONS, [[im] for im in images()], max_new_tokens=4)
    assert model.answer(QUESTIONS, images(), max_new_tokens=4) == nested
    assert model.answer(QUESTIONS[0], images()[:1], max_new_tokens=4) == nested[:1]


def test_a_prompt_only_forward_has_no_loss_and_bare_input_ids_run_as_text(build, images):
    model = build(arch="nvlm_x")
    assert model(**model.processor(text="What text?", images=images()[0])).loss is None
    ids = torch.tensor([text_ids(model.tokenizer, "hello there")])
    out = model(input_ids=ids, labels=ids)
    assert out.loss is not None and torch.isfinite(out.loss)
    with pytest.raises(TypeError, match="without media_layout"):
        model(input_ids=ids, pixel_values=torch.zeros(1, 3, 32, 32))


def test_added_tokens_resize_the_embeddings_and_the_saved_folder_reloads_at_the_new_size(tmp_path, build, images):
    model = build(arch="nvlm_d")
    before = model.get_input_embeddings().num_embeddings
    model.tokenizer.add_tokens(["<cell>", "<row>"])
    model.resize_token_embeddings(len(model.tokenizer))
    assert model.get_input_embeddings().num_embeddings == len(model.tokenizer) > before
    model.save_pretrained(tmp_path)
    loaded = MMLLM.from_pretrained(tmp_path)
    inputs = model.processor(text="<cell> What text?", images=images()[0])
    assert loaded.get_input_embeddings().num_embeddings == len(model.tokenizer)
    assert torch.equal(loaded(**inputs).logits, model(**inputs).logits)


def test_saved_weights_and_atomically_written_reports_are_as_readable_as_any_file_the_user_creates(tmp_path, build):
    from mmllm.jsonl import write_text_atomic

    build().save_pretrained(tmp_path / "model")
    write_text_atomic(tmp_path / "report.md", "# report\n")
    (tmp_path / "plain.txt").write_text("x")
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.rglob("*") if p.is_file()}
    assert modes["model.safetensors"] == modes["report.md"] == modes["plain.txt"] == modes["config.json"]
