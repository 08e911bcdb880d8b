"""Nothing a downloaded folder or checkpoint contains gets to run code or allocate without bound."""
import builtins
import json

import pytest
import torch

from mmllm.model import MMLLM
from mmllm.tokenizer import load_tokenizer


HOSTILE_TOKENIZER = """
from pathlib import Path
Path(__file__).with_name("RAN").write_text("the folder's code ran")
from transformers import PreTrainedTokenizerFast as EvilTokenizer
"""


def test_a_tokenizer_folder_with_its_own_code_is_refused_even_when_the_user_would_say_yes(tmp_path, monkeypatch):
    (tmp_path / "evil.py").write_text(HOSTILE_TOKENIZER)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "EvilTokenizer", "auto_map": {"AutoTokenizer": ["evil.EvilTokenizer", None]}}))
    asked = []
    monkeypatch.setattr(builtins, "input", lambda prompt="": asked.append(prompt) or "y")
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_tokenizer(str(tmp_path))
    assert not asked and not (tmp_path / "RAN").exists()


def test_a_saved_folder_whose_config_outgrows_its_weights_is_refused_before_building(tmp_path, tiny_config):
    torch.manual_seed(0)
    MMLLM(tiny_config()).save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    meta["llm_config"].update(hidden_size=16384, intermediate_size=65536, num_hidden_layers=48)  # ~60 B params
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="describes an LLM of .* parameters but model.safetensors holds"):
        MMLLM.from_pretrained(tmp_path)


def test_a_saved_folder_still_loads_to_the_same_outputs(tmp_path, tiny_config):
    torch.manual_seed(0)
    model = MMLLM(tiny_config()).eval()
    model.save_pretrained(tmp_path)
    ids = torch.tensor([[5, 6, 7, 8]])
    assert torch.equal(MMLLM.from_pretrained(tmp_path).llm(input_ids=ids).logits, model.llm(input_ids=ids).logits)
