"""Re-key this folder's items by a model's own preference: a check of the multiple-choice direction.

`python examples/lmms_eval_task/keyed_items.py MODEL OUT` writes OUT/items.jsonl, where each item is a choice
among four letters whose key is the letter the model ranks first (highest log-prob as the answer's first
token), and OUT/mmllm_choice_keyed.yaml, the multiple-choice task over them. Any model then scores acc 1.0
through lmms-eval (`--include_path OUT --tasks mmllm_choice_keyed`); an adapter that returns log-probs where
lmms-eval takes the argmin of losses scores 0.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from mmllm.model import MMLLM
from mmllm.train.load import load_model

from utils import doc_to_visual  # the task's own image loader, next to this script

HERE = Path(__file__).resolve().parent

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
TASK = "mmllm_choice_keyed"


@torch.no_grad()
def keyed_items(model: MMLLM, items: list[dict]) -> list[dict]:
    """Each item with `choices` (four letters) and `answer` (the index of the model's favourite, rotating)."""
    ids = [model.tokenizer(c, add_special_tokens=False).input_ids for c in LETTERS]
    if any(len(i) != 1 for i in ids):
        raise ValueError("the model's tokenizer splits a single letter; the check needs one token per letter")
    letter_ids = torch.tensor([i[0] for i in ids])
    keyed = []
    for k, item in enumerate(items):
        prompt = model.processor.encode_prompt(item["question"], doc_to_visual(item))
        best = int(model(model.processor.collate([prompt])).logits[0, -1, letter_ids].argmax())
        others = [LETTERS[(best + j) % len(LETTERS)] for j in (1, 2, 3)]
        gold = k % 4
        keyed.append(dict(item, choices=[*others[:gold], LETTERS[best], *others[gold:]], answer=gold))
    return keyed


def main(model_path: str, out: str) -> None:
    out_dir = Path(out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    items = [json.loads(line) for line in (HERE / "items.jsonl").read_text().splitlines()]
    keyed = keyed_items(load_model(model_path).eval(), items)
    (out_dir / "items.jsonl").write_text("".join(json.dumps(item) + "\n" for item in keyed))
    # JSON is YAML; absolute paths, so lmms-eval finds both from any working directory
    task = {"include": str(HERE / "mmllm_choice_local.yaml"), "task": TASK,
            "dataset_kwargs": {"data_files": {"test": str(out_dir / "items.jsonl")}}}
    (out_dir / f"{TASK}.yaml").write_text(json.dumps(task, indent=2) + "\n")
    print(f"wrote {len(items)} items keyed by {model_path} and the task {TASK} to {out_dir}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python examples/lmms_eval_task/keyed_items.py MODEL OUT")
    main(*sys.argv[1:])
