"""Eval-format items (`id`, `image` and/or `audio`, `question`, `answers`) as generation prompts: what
`mmllm eval`, `controls`, `compare` and `mmllm predict` feed a model.

They live with the evaluation code that reads them, not with the training data (train/data.py), whose
conversations they share only the media loading and the `Batch` a loader yields.
"""
from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from mmllm.jsonl import read_jsonl
from mmllm.processor import Processor, SampleError
from mmllm.train.data import Batch, Notes, load_media


class ItemsDataset(Dataset):
    """Eval-format items encoded as generation prompts.

    A bad item is not replaced (scores must cover exactly the given items): it comes back with its
    error, and the caller skips and counts it."""

    def __init__(self, path: str | Path, processor: Processor, template: str = "{question}",
                 capitalize: bool = False) -> None:
        self.processor, self.template, self.capitalize = processor, template, capitalize
        self.records, self.bad_lines = read_jsonl(path, ("id", "question"))

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        try:
            images, audio = load_media(self.processor, record)
            question = str(record.data["question"]).strip()
            prompt = self.template.format(question=question.capitalize() if self.capitalize else question)
            sample = self.processor.encode_prompt(prompt, images, audio)
            notes = [f"{record.where()}: {note}" for note in sample["truncated"]]
            return {"record": record, "sample": sample, "error": None, "truncated": notes}
        except (SampleError, KeyError, IndexError) as exc:
            return {"record": record, "sample": None, "error": f"{record.where()}: {exc}", "truncated": []}


class PromptCollator:
    """A batch of the items that encoded, their records, and the errors of those that did not.
    Module-level callable so DataLoader workers can pickle it."""

    def __init__(self, processor: Processor) -> None:
        self.processor = processor

    def __call__(self, items: list[dict]) -> Batch:
        good = [it for it in items if it["sample"] is not None]
        records = [it["record"] for it in good]
        notes = Notes([r.id for r in records], truncated=[t for it in items for t in it["truncated"]],
                      skipped=[it["error"] for it in items if it["sample"] is None], records=records)
        return Batch(self.processor.collate([it["sample"] for it in good]) if good else None, notes)
