"""Training data: LLaVA-format JSONL -> processor samples, with bad input reported, replaced and counted."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import lightning as L
from torch.utils.data import DataLoader, Dataset

from mmllm.jsonl import BadInput, Record, read_jsonl
from mmllm.processor import ModelInputs, Processor, SampleError

# How many following records a bad sample may borrow from before the batch is declared unusable.
MAX_SUBSTITUTE_TRIES = 16


def paths_of(record: Record, key: str) -> list[str]:
    """The record's `image` or `audio` paths (one or a list), resolved against the JSONL's folder."""
    value = record.data.get(key)
    paths = [] if value is None else [value] if isinstance(value, str) else list(value)
    return [str(Path(record.file).parent / p) for p in paths]


def load_media(processor: Processor, record: Record) -> tuple[list, list]:
    """Decode and check every image and audio clip of a record (a bad one raises SampleError)."""
    images = [processor.load_image(p) for p in paths_of(record, "image")]
    return images, [processor.load_audio(p) for p in paths_of(record, "audio")]


class ConversationDataset(Dataset):
    """LLaVA conversation records. A sample that fails to load is replaced by the next good one
    (deterministic, so batch shapes agree across ranks) and its id and reason travel with the batch;
    so do notes on audio clips truncated to the window (those samples are kept)."""

    def __init__(self, files: str | Sequence[str], processor: Processor) -> None:
        self.processor = processor
        self.records: list[Record] = []
        self.bad_lines: list[BadInput] = []
        for f in [files] if isinstance(files, str) else files:
            records, bad = read_jsonl(f, ("conversations",))
            self.records += records
            self.bad_lines += bad
        if not self.records:
            raise ValueError(f"no usable samples in {files} ({len(self.bad_lines)} malformed line(s))")

    def __len__(self) -> int:
        return len(self.records)

    def load(self, record: Record) -> dict:
        try:
            images, audio = load_media(self.processor, record)
            sample = self.processor.encode(record.data["conversations"], images, audio=audio)
            return {**sample, "truncated": [f"{record.where()}: {note}" for note in sample["truncated"]]}
        except SampleError as exc:
            raise SampleError(f"{record.where()}: {exc}") from None
        except (KeyError, TypeError, AttributeError) as exc:
            raise SampleError(f"{record.where()}: malformed conversation ({type(exc).__name__}: {exc})") from None

    def __getitem__(self, index: int) -> dict:
        bad: list[str] = []
        for k in range(MAX_SUBSTITUTE_TRIES):
            record = self.records[(index + k) % len(self.records)]
            try:
                sample = self.load(record)
            except SampleError as exc:
                bad.append(str(exc))
                continue
            # Report only the requested sample; a failing substitute is counted at its own index.
            return {**sample, "id": record.id, "bad": bad[:1]}
        raise SampleError(f"{MAX_SUBSTITUTE_TRIES} consecutive bad samples from index {index}: " + "; ".join(bad))


@dataclass
class Batch:
    """What a loader yields: the model's inputs (None when no item of the batch could be encoded) and the
    bookkeeping that is reported, not computed on: sample ids, bad samples, truncation notes, and for
    eval items the records and the items skipped."""

    inputs: ModelInputs | None
    ids: list[str]
    bad: list[str] = field(default_factory=list)
    truncated: list[str] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


class Collator:
    """Module-level callable so DataLoader workers can pickle it."""

    def __init__(self, processor: Processor) -> None:
        self.processor = processor

    def __call__(self, samples: list[dict]) -> Batch:
        return Batch(self.processor.collate(samples), [s["id"] for s in samples],
                     bad=[b for s in samples for b in s["bad"]], truncated=[t for s in samples for t in s["truncated"]])


class MMDataModule(L.LightningDataModule):
    """Train/val/test JSONL files (one path or a list). The processor comes from the model (linked in
    the CLI), so the data layout always follows `--model.arch`."""

    def __init__(
        self,
        train: str | list[str] | None = None,
        val: str | list[str] | None = None,
        test: str | list[str] | None = None,
        predict: str | None = None,
        prompt_template: str = "{question}",
        batch_size: int = 8,
        num_workers: int = 0,
        max_bad_fraction: float = 0.1,
        synth_task: str | None = None,
        synth_n: int = 2000,
        synth_level: str = "easy",
        synth_dir: str = "runs/data",
        processor: Processor | None = None,
    ) -> None:
        """With no `train` files and a `synth_task`, the data is synthesised (seed 0 train, seed 1 val)
        into `synth_dir`, so a config runs on a fresh machine with nothing downloaded."""
        super().__init__()
        self.synth_jobs: list[tuple[Path, int, int]] = []
        if train is None and synth_task:
            root = Path(synth_dir) / f"{synth_task}-{synth_level}-n{synth_n}"
            self.synth_jobs = [(root / "train", synth_n, 0), (root / "val", max(8, synth_n // 10), 1)]
            train, val = str(root / "train" / "train.jsonl"), val or str(root / "val" / "train.jsonl")
        self.synth_task, self.synth_level = synth_task, synth_level
        self.files = {"train": train, "val": val, "test": test}
        self.predict, self.prompt_template = predict, prompt_template
        self.batch_size, self.num_workers = batch_size, num_workers
        self.max_bad_fraction = max_bad_fraction
        self.processor = processor
        self.datasets: dict[str, ConversationDataset] = {}

    def transfer_batch_to_device(self, batch: Batch, device, dataloader_idx: int) -> Batch:
        """Only the model inputs move; the bookkeeping (records, ids, reports) stays as it is."""
        return replace(batch, inputs=batch.inputs.to(device) if batch.inputs is not None else None)

    def prepare_data(self) -> None:
        from .synth import synthesize_once

        for folder, n, seed in self.synth_jobs:
            synthesize_once(self.synth_task, folder, n, seed=seed, level=self.synth_level)

    def dataset(self, split: str) -> ConversationDataset:
        if split not in self.datasets:
            if not self.files[split]:
                raise ValueError(f"no {split} data: pass --data.{split} PATH.jsonl")
            if self.processor is None:
                raise ValueError("MMDataModule needs the model's processor (linked automatically by the CLI)")
            ds = ConversationDataset(self.files[split], self.processor)
            for bad in ds.bad_lines:
                print(f"[mmllm] skipped malformed line {bad}")
            self.datasets[split] = ds
        return self.datasets[split]

    def loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(
            self.dataset(split), batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
            collate_fn=Collator(self.processor), persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self.loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        return self.loader("val", shuffle=False) if self.files["val"] else []  # validation is optional

    def test_dataloader(self) -> DataLoader:
        return self.loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        if not self.predict:
            raise ValueError("no predict data: pass --data.predict items.jsonl")
        items = ItemsDataset(self.predict, self.processor, self.prompt_template)
        for bad in items.bad_lines:
            print(f"[mmllm] skipped malformed line {bad}")
        return DataLoader(items, batch_size=self.batch_size, num_workers=self.num_workers, collate_fn=PromptCollator(self.processor))



class ItemsDataset(Dataset):
    """Eval-format items (`id`, `image` and/or `audio`, `question`, `answers`) encoded as generation prompts.

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
    def __init__(self, processor: Processor) -> None:
        self.processor = processor

    def __call__(self, items: list[dict]) -> Batch:
        good = [it for it in items if it["sample"] is not None]
        records = [it["record"] for it in good]
        return Batch(self.processor.collate([it["sample"] for it in good]) if good else None, [r.id for r in records],
                     truncated=[t for it in items for t in it["truncated"]], records=records,
                     skipped=[it["error"] for it in items if it["sample"] is None])
