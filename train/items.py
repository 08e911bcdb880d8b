"""Eval-format items (`id`, `image` and/or `audio`, `question`, `answers`) as generation prompts: what
`mmllm eval`, `controls`, `compare` and `mmllm predict` feed a model.

They live in train/, beside the training data (train/data.py), because `mmllm predict` (the data module's
predict loader) reads them as much as eval/ does, and train/ never imports eval/. They share with the
conversations only the media loading and the `Batch` a loader yields.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from string import Formatter

from torch.utils.data import Dataset

from mmllm.config import DEFAULT_MAX_LENGTH
from mmllm.jsonl import Record, read_jsonl
from mmllm.processor import Processor
from mmllm.sample import Sample, SampleError

from .data import Batch, Notes, check_chars, chars_per_token
from .media import load_media


def check_template(template: str) -> None:
    """A prompt template holds `{question}` and no other field, else the question never reaches the model or
    every item fails to format: refused before anything runs."""
    try:
        fields = {name for _, name, _, _ in Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise ValueError(f"prompt template {template!r} is not a format string: {exc}") from None
    if fields != {"question"}:
        other = sorted(fields - {"question"})
        raise ValueError(f"prompt template {template!r} must hold {{question}} and no other field"
                         + (f"; it has {', '.join('{' + f + '}' for f in other)}" if other else ""))


@dataclass
class PromptItem:
    """One eval item: its record and its prompt encoded, or (sample None) the error that kept it from encoding."""

    record: Record
    sample: Sample | None
    error: str | None = None


class ItemsDataset(Dataset):
    """Eval-format items encoded as generation prompts.

    A bad item is not replaced (scores must cover exactly the given items): it comes back with its
    error, and the caller skips and counts it. A prompt over `max_length` tokens (None: no limit) is such
    an item, found from its character count before anything is tokenised or decoded where it can be."""

    def __init__(self, path: str | Path, processor: Processor, template: str = "{question}",
                 capitalize: bool = False, max_length: int | None = DEFAULT_MAX_LENGTH) -> None:
        check_template(template)
        self.processor, self.template, self.capitalize, self.max_length = processor, template, capitalize, max_length
        self.chars_per_token = chars_per_token(processor)
        self.records, self.bad_lines = read_jsonl(path, ("id", "question"))

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> PromptItem:
        record = self.records[index]
        try:
            question = str(record.data["question"]).strip()
            prompt = self.template.format(question=question.capitalize() if self.capitalize else question)
            check_chars(len(prompt), self.max_length, self.chars_per_token)
            images, audio = load_media(self.processor, record)
            sample = self.processor.encode_prompt(prompt, images, audio)
            if self.max_length is not None and len(sample.input_ids) > self.max_length:
                raise SampleError(f"{len(sample.input_ids)} tokens > max_length {self.max_length}")
            return PromptItem(record, sample.located(record.where()))
        except (SampleError, KeyError, IndexError) as exc:
            return PromptItem(record, None, f"{record.where()}: {exc}")


class PromptCollator:
    """A batch of the items that encoded, their records, and the errors of those that did not.
    Module-level callable so DataLoader workers can pickle it."""

    def __init__(self, processor: Processor) -> None:
        self.processor = processor

    def __call__(self, items: list[PromptItem]) -> Batch:
        good = [it for it in items if it.sample is not None]
        records = [it.record for it in good]
        notes = Notes([r.id for r in records], truncated=[t for it in good for t in it.sample.truncated],
                      skipped=[it.error for it in items if it.sample is None], records=records)
        return Batch(self.processor.collate([it.sample for it in good]) if good else None, notes)
