"""The real-parts recipe (configs/real/*.yaml) runs as shipped, with only paths and sizes overridden: a small
random Qwen2 and SigLIP written with `save_pretrained` stand in for the downloads. Stage 1 trains the connector
alone; stage 2 starts from stage 1's weights and trains the LLM too; D, X and H alike."""
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

from mmllm.tokenizer import byte_tokenizer

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def parts(tmp_path_factory, mmllm) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("parts")
    torch.manual_seed(0)
    tokenizer = byte_tokenizer()
    qwen = AutoConfig.for_model("qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, vocab_size=len(tokenizer),
                                max_position_embeddings=512)
    AutoModelForCausalLM.from_config(qwen).save_pretrained(root / "qwen2")
    tokenizer.save_pretrained(root / "qwen2")
    # patch 14 on 42-px tiles: a 3 x 3 grid, which the recipe's 3 x 3 pixel shuffle turns into one token
    siglip = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                                patch_size=14, image_size=42)
    SiglipVisionModel(siglip).save_pretrained(root / "siglip")
    SiglipImageProcessor(size={"height": 42, "width": 42}).save_pretrained(root / "siglip")
    mmllm("data", "synth", "--task", "ocr", "--n", "16", "--out", str(root / "data"), cwd=root)
    return {"qwen2": root / "qwen2", "siglip": root / "siglip", "data": root / "data" / "train.jsonl"}


def fit(mmllm, stage: str, arch: str, parts: dict[str, Path], root: Path, *extra: str) -> dict:
    args = ["fit", "--config", str(REPO / "configs" / "real" / "siglip_qwen2.yaml"),
            "--config", str(REPO / "configs" / "real" / f"{stage}.yaml"), "--model.arch", arch,
            "--model.encoder.pretrained", str(parts["siglip"]), "--model.encoder.image_size", "42",
            "--model.llm.name_or_path", str(parts["qwen2"]),  # its tokenizer comes with it
            "--data.train", str(parts["data"]), "--data.batch_size", "4", "--data.num_workers", "0",
            "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.max_steps", "2",
            "--trainer.default_root_dir", str(root), *extra]
    mmllm(*args, cwd=root.parent)
    return torch.load(next(root.rglob("last.ckpt")), map_location="cpu", weights_only=True)


@pytest.mark.parametrize("arch", ["nvlm_d", "nvlm_x", "nvlm_h"])
def test_the_staged_recipe_trains_the_connector_then_the_llm_from_saved_parts(parts, tmp_path, arch, mmllm):
    qwen = AutoModelForCausalLM.from_pretrained(parts["qwen2"]).state_dict()
    pretrain = fit(mmllm, "pretrain", arch, parts, tmp_path / "pretrain")
    assert pretrain["global_step"] == 2 and pretrain["hyper_parameters"]["stage"] == "pretrain"
    weights = pretrain["state_dict"]
    # The frozen LLM is the saved Qwen2, bit for bit (the cross-attention wrappers move its layers' keys;
    # the embeddings gain rows for tokens the tokenizer added, e.g. Qwen2's <|endoftext|>).
    llm = {k.removeprefix("model.llm.").replace(".layer.", "."): v for k, v in weights.items()
           if k.startswith("model.llm.") and ".cross." not in k}
    assert set(qwen) <= set(llm)
    assert all(torch.equal(llm[k][: len(v)], v) for k, v in qwen.items())
    last = next((tmp_path / "pretrain").rglob("last.ckpt"))
    sft = fit(mmllm, "sft", arch, parts, tmp_path / "sft", "--model.init_from", str(last))
    assert sft["hyper_parameters"]["stage"] == "sft" and sft["global_step"] == 2  # a fresh run, not a resume
    tuned = {k: v for k, v in sft["state_dict"].items() if k.startswith("model.llm.") and ".cross." not in k}
    assert any(not torch.equal(v, weights[k]) for k, v in tuned.items())  # the LLM now trains
    encoder = [k for k in weights if k.startswith("model.encoder.")]
    assert encoder and all(torch.equal(sft["state_dict"][k], weights[k]) for k in encoder)  # the tower stays
