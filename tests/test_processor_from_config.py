"""`MMLLMProcessor.from_config`: the model's processor, from its config alone, so data work needs no model."""
import dataclasses

import numpy as np
import pytest
import torch
from safetensors import SafetensorError
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, LlamaConfig

from mmllm.config import EncoderConfig, LLMConfig
from mmllm.model import MMLLM
from mmllm.processor import MMLLMProcessor
from mmllm.tokenizer import load_tokenizer

HF_TOWER = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "patch_size": 8}
OPEN_CLIP_TOWER = {"embed_dim": 16, "vision_cfg": {"width": 32, "layers": 1, "patch_size": 8, "head_width": 16},
                   "text_cfg": {"width": 32, "heads": 2, "layers": 1, "vocab_size": 100, "context_length": 8}}
CASES = {
    "timm-d": {},
    "timm-x-shuffled": {"arch": "nvlm_x", "pixel_shuffle": 2,
                        "encoder": EncoderConfig(feature_layer=-1, options={"embed_dim": 32, "depth": 1, "num_heads": 2,
                                                                            "patch_size": [8, 8]})},
    "hf-h": {"arch": "nvlm_h", "encoder": EncoderConfig(family="hf", model="clip_vision_model", feature_layer=-1,
                                                        options=HF_TOWER)},
    "open_clip-d": {"encoder": EncoderConfig(family="open_clip", model="ViT-B-32", feature_layer=-1,
                                             options=OPEN_CLIP_TOWER)},
}


def assert_same(a, b, where="") -> None:
    """Equal records, field by field down to the tensors (a Sample, ModelInputs and its MediaLayout)."""
    if dataclasses.is_dataclass(a):
        for field in dataclasses.fields(a):
            assert_same(getattr(a, field.name), getattr(b, field.name), f"{where}.{field.name}")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, (list, tuple)) and any(isinstance(x, torch.Tensor) for x in a):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.parametrize("case", CASES)
def test_a_processor_from_the_config_equals_the_models_own(case, tiny_config, text_image):
    cfg = tiny_config(**CASES[case])
    own = MMLLM(cfg).processor
    made = MMLLMProcessor.from_config(cfg)
    assert made.to_dict() == own.to_dict()
    turns = [{"from": "human", "value": "<image>\nRead it."}, {"from": "gpt", "value": "ab12"}]
    image = text_image("ab12", size=(96, 32))
    assert_same(made.encode(turns, [image]), own.encode(turns, [image]))


def test_a_processor_from_the_config_lays_out_audio_as_the_model_does(tiny_config, audio_config, tone):
    cfg = tiny_config(audio=audio_config)
    own, made = MMLLM(cfg).processor, MMLLMProcessor.from_config(cfg)
    assert made.audio == own.audio and made.audio["frames_per_token"] == 2 * audio_config.factor
    turns = [{"from": "human", "value": "<audio>\nTranscribe."}, {"from": "gpt", "value": "one two"}]
    clip = np.asarray(tone(1.3), dtype=np.float32)
    assert_same(made.encode(turns, [], audio=[clip]), own.encode(turns, [], audio=[clip]))


def test_a_processor_from_the_config_reads_no_weights(tmp_path, tiny_config):
    """Pretrained parts whose weight files are broken: the processor only needs their configs and tokenizer."""
    tower = tmp_path / "tower"
    CLIPVisionModel(CLIPVisionConfig(image_size=32, **HF_TOWER)).save_pretrained(tower)
    CLIPImageProcessor(image_mean=[0.1, 0.2, 0.3], image_std=[0.4, 0.5, 0.6]).save_pretrained(tower)
    llm = tmp_path / "llm"
    load_tokenizer(None).save_pretrained(llm)
    LlamaConfig(**tiny_config().llm.options).save_pretrained(llm)
    for weights in (tower / "model.safetensors", llm / "model.safetensors"):
        weights.write_bytes(b"not a weight file")
    pretrained_tower = EncoderConfig(family="hf", model="unused", pretrained=str(tower), feature_layer=-1)
    pretrained_llm = LLMConfig(name_or_path=str(llm))
    for part in ({"encoder": pretrained_tower}, {"llm": pretrained_llm}):
        with pytest.raises((SafetensorError, OSError)):
            MMLLM(tiny_config(**part))  # the model reads the weights
    made = MMLLMProcessor.from_config(tiny_config(encoder=pretrained_tower, llm=pretrained_llm))
    assert (made.image_mean, made.image_std, made.tile_size, made.tokens_per_tile) == (
        [0.1, 0.2, 0.3], [0.4, 0.5, 0.6], 32, 4)  # 4x4 patches, shuffled 2x2
    assert made.tokenizer.get_vocab() == load_tokenizer(str(llm)).get_vocab()


def test_a_config_with_oblong_tiles_is_refused_before_any_model_is_built(tiny_config):
    cfg = tiny_config(encoder=EncoderConfig(model="resnet18", options={}, image_size=[32, 64], feature_layer=-1))
    with pytest.raises(ValueError, match="tiles are square; encoder resnet18 takes 32x64"):
        MMLLMProcessor.from_config(cfg)


def test_the_data_module_makes_the_models_batches_with_a_processor_from_the_config(tmp_path, tiny_config, text_image,
                                                                                  chat, write_jsonl):
    from mmllm.train.data import MMDataModule

    text_image("ab12").save(tmp_path / "line.png")
    train = write_jsonl(tmp_path / "train.jsonl", [chat(i, image="line.png") for i in range(4)])
    cfg = tiny_config(arch="nvlm_h")
    batches = []
    for processor in (MMLLMProcessor.from_config(cfg), MMLLM(cfg).processor):
        data = MMDataModule(train=train, batch_size=4, processor=processor)
        data.setup("fit")
        batches.append(next(iter(data.train_dataloader())))
    made, own = batches
    assert made.ids == own.ids and made.inputs.pixel_values.shape[0] > 0
    assert_same(made.inputs, own.inputs)
