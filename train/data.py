"""Training data: LLaVA-format JSONL (or JSON arrays) -> processor samples, with bad input reported, counted
and replaced (training) or dropped (val/test)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, NamedTuple, Sequence, get_args

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchdata.stateful_dataloader import StatefulDataLoader

from mmllm.config import DEFAULT_MAX_LENGTH
from mmllm.jsonl import BadInput, Record
from mmllm.processor import IGNORE_INDEX, Processor
from mmllm.sample import ModelInputs, Sample, SampleError

from .index import Catalog, open_source
from .lengths import estimate_lengths
from .sampling import EpochSampler, LengthGroupedSampler

LengthPolicy = Literal["skip", "truncate"]


@dataclass
class Loaded:
    """One training item: the sample with its record's id (None: dropped, a val/test record that could not be
    used) and the errors met getting it (a training item stands in for the bad record it names)."""

    sample: Sample | None
    id: str = ""
    bad: list[str] = field(default_factory=list)


class ConversationDataset(Dataset):
    """LLaVA conversation records (JSONL, a JSON array or a shard folder; see `train/index.py`: records are
    indexed, not held, and parsed when asked for). A sample that cannot be used (bad media, no
    answer to train on, too long) is reported with file:line, id and reason, then:

    - with `substitute` (training) replaced by the next good record, wrapping round: deterministic, so
      batch shapes agree across ranks. Only the requested sample is reported; a failing stand-in is
      counted at its own index. A record found bad is remembered (per worker) and not decoded again.
    - without (val/test) dropped from its batch, so no loss is computed on stand-ins.

    `max_length` caps the tokens of a sample (None: no cap). Over it, `length_policy` "skip" makes the
    sample bad; "truncate" cuts its end off and notes it (like audio clips cut to the window, the sample
    is kept), unless the cut would split or drop an image or clip or leave no answer token: then it skips.

    `measure_images`: read every image's header when indexing a file, so `lengths` knows its tile grid
    (what length-grouped batching needs; shards always know it).
    """

    def __init__(self, files: str | Sequence[str], processor: Processor, substitute: bool = True,
                 image_folder: str | None = None, max_length: int | None = DEFAULT_MAX_LENGTH,
                 length_policy: LengthPolicy = "skip", measure_images: bool = False) -> None:
        self.files, self.processor, self.substitute, self.image_folder = files, processor, substitute, image_folder
        self.max_length, self.length_policy = max_length, length_policy
        self.chars_per_token = chars_per_token(processor)
        self.known_bad: dict[int, str] = {}
        self.records = Catalog([open_source(f, image_folder, measure_images)
                                for f in ([files] if isinstance(files, str) else files)])
        self.bad_lines: list[BadInput] = self.records.bad_lines
        self._lengths: np.ndarray | None = None
        if not self.records:
            first = f"; first: {self.bad_lines[0]}" if self.bad_lines else ""
            raise ValueError(f"no usable samples in {files}: {len(self.bad_lines)} malformed line(s){first}")

    def __len__(self) -> int:
        return len(self.records)

    @property
    def lengths(self) -> np.ndarray:
        """Estimated tokens per record (`train/lengths.py`), computed on first use."""
        if self._lengths is None:
            self._lengths = estimate_lengths(self.processor, self.records.features)
        return self._lengths

    def load(self, index: int) -> Loaded:
        """Record `index` as a processor sample with its id, or a SampleError saying where and why it
        cannot be used."""
        record = self.records[index]
        try:
            turns = record.data["conversations"]
            self.check_text_length(turns)
            images, audio = self.records.media(index, record, self.processor)
            sample = self.processor.encode(turns, images, audio=audio)
            if not self.has_answer(sample.labels):
                raise SampleError("no assistant turn to train on")
            sample = self.fit_length(sample)
            return Loaded(sample.located(record.where()), record.id)
        except SampleError as exc:
            raise SampleError(f"{record.where()}: {exc}") from None
        except (KeyError, TypeError, AttributeError) as exc:
            raise SampleError(f"{record.where()}: malformed conversation ({type(exc).__name__}: {exc})") from None

    def check_text_length(self, turns: Sequence[dict]) -> None:
        """Under "skip", text that cannot fit is rejected before it is tokenised or its media decoded,
        so a runaway answer costs nothing."""
        if self.length_policy == "skip":
            check_chars(sum(len(turn["value"]) for turn in turns), self.max_length, self.chars_per_token)

    def fit_length(self, sample: Sample) -> Sample:
        """The sample within `max_length` tokens as `length_policy` says, or a SampleError."""
        n, limit = len(sample.input_ids), self.max_length
        if limit is None or n <= limit:
            return sample
        over = f"{n} tokens > max_length {limit}"
        if self.length_policy == "skip":
            raise SampleError(over)
        if sample.media_end > limit:
            raise SampleError(f"{over}; truncating would cut an image or audio clip")
        cut = sample.cut(limit)
        if not self.has_answer(cut.labels):
            raise SampleError(f"{over}; truncating would leave no answer token")
        return replace(cut, truncated=[*sample.truncated, f"{over}: truncated to {limit} tokens"])

    def has_answer(self, labels: Sequence[int]) -> bool:
        """Whether any answer text is trained on (an end-of-sequence token alone is no answer), so a sample
        with nothing to learn is reported instead of adding a silent zero (or, alone in a batch, NaN) loss."""
        return any(label not in (IGNORE_INDEX, self.processor.tokenizer.eos_token_id) for label in labels)

    def get(self, index: int) -> Loaded:
        """`load` with memory: a record found bad once (in this worker) fails again without being decoded."""
        if index in self.known_bad:
            raise SampleError(self.known_bad[index])
        try:
            return self.load(index)
        except SampleError as exc:
            self.known_bad[index] = str(exc)
            raise

    def __getitem__(self, index: int) -> Loaded:
        try:
            return self.get(index)
        except SampleError as exc:
            bad = [str(exc)]
        if not self.substitute:
            return Loaded(None, bad=bad)  # no sample: the Collator drops it
        return replace(self.stand_in(index), bad=bad)

    def stand_in(self, index: int) -> Loaded:
        """The next good record after `index`, wrapping round. However many bad records come in a row, the
        run goes on (`max_bad_fraction` is the rule); only a dataset with no good record at all is an error."""
        n = len(self.records)
        for k in range(1, n):
            j = (index + k) % n
            try:
                return self.get(j)
            except SampleError:
                continue
        raise ValueError(f"no usable sample in {self.files}: all {n} record(s) failed to load; "
                         f"first: {self.known_bad[min(self.known_bad)]}")


def chars_per_token(processor: Processor) -> int:
    """No token holds more characters than its vocabulary string, so longer text cannot fit max_length."""
    return max(map(len, processor.tokenizer.get_vocab()))


def check_chars(chars: int, max_length: int | None, per_token: int) -> None:
    """A SampleError when `chars` characters cannot fit `max_length` tokens (None: no limit): checked before
    tokenising, so a runaway text costs nothing."""
    if max_length is not None and chars > max_length * per_token:
        raise SampleError(f"{chars} characters of text > max_length {max_length} tokens "
                          f"of at most {per_token} characters each")


class Notes:
    """A batch's bookkeeping, reported and never computed on: sample ids, bad samples, truncation notes, and for
    eval items the records and the items skipped.

    A plain object, not a dataclass or a sequence: FSDP's root and Lightning's precision plugins rebuild every
    dataclass, list and tuple of a batch to cast its tensors, and carry anything else over as it is (frozen
    records could not be rebuilt)."""

    def __init__(self, ids: Sequence[str], bad: Sequence[str] = (), truncated: Sequence[str] = (),
                 skipped: Sequence[str] = (), records: Sequence[Record] = ()) -> None:
        self.ids, self.bad, self.truncated = list(ids), list(bad), list(truncated)
        self.skipped, self.records = list(skipped), list(records)

    def __repr__(self) -> str:
        counts = f"bad={len(self.bad)}, truncated={len(self.truncated)}, skipped={len(self.skipped)}"
        return f"Notes(ids={self.ids}, {counts})"


@dataclass
class Batch:
    """What a loader yields: the model's inputs (None when no item of the batch could be encoded), which casts
    and device moves reach, and the notes beside them, which they leave alone."""

    inputs: ModelInputs | None
    notes: Notes

    ids = property(lambda self: self.notes.ids)
    bad = property(lambda self: self.notes.bad)
    truncated = property(lambda self: self.notes.truncated)
    skipped = property(lambda self: self.notes.skipped)
    records = property(lambda self: self.notes.records)


class Collator:
    """Module-level callable so DataLoader workers can pickle it. With `pack_to`, the batch's samples are packed
    into rows of at most that many tokens (`MMLLMProcessor.pack`) instead of one padded row each."""

    def __init__(self, processor: Processor, pack_to: int = 0) -> None:
        self.processor, self.pack_to = processor, pack_to

    def __call__(self, items: list[Loaded]) -> Batch:
        kept = [it for it in items if it.sample is not None]  # a dropped val/test item has no sample
        notes = Notes([it.id for it in kept], bad=[b for it in items for b in it.bad],
                      truncated=[t for it in kept for t in it.sample.truncated])
        good = [it.sample for it in kept]
        if not good:
            return Batch(None, notes)
        return Batch(self.processor.pack(good, self.pack_to) if self.pack_to else self.processor.collate(good), notes)


class SynthJob(NamedTuple):
    """A synthetic split that `prepare_data` writes (once) before the run reads it."""

    folder: Path
    n: int
    seed: int

    @property
    def file(self) -> str:
        return str(self.folder / "train.jsonl")


def synth_jobs(task: str, level: str, n: int, root: str, with_val: bool) -> dict[str, SynthJob]:
    """The splits a run without training files synthesises: seed 0 train and, unless val files are given, a
    seed 1 val set of a tenth the size (at least 8), in one folder per (task, level, n)."""
    folder = Path(root) / f"{task}-{level}-n{n}"
    jobs = {"train": SynthJob(folder / "train", n, 0)}
    if with_val:
        jobs["val"] = SynthJob(folder / "val", max(8, n // 10), 1)
    return jobs


def check_settings(max_bad_fraction: float, max_length: int | None, length_policy: str, pack_to: int) -> None:
    """The data module's numeric and choice settings, each refused with its valid range."""
    if not 0 <= max_bad_fraction <= 1:
        raise ValueError(f"max_bad_fraction must be a fraction in [0, 1], got {max_bad_fraction}")
    if max_length is not None and max_length < 1:
        raise ValueError(f"max_length must be at least 1 token (or None: no limit), got {max_length}")
    if length_policy not in get_args(LengthPolicy):
        raise ValueError(f"length_policy must be one of {get_args(LengthPolicy)}, got {length_policy!r}")
    if pack_to < 0:
        raise ValueError(f"pack_to must be a row length in tokens (0: no packing), got {pack_to}")


class MMDataModule(L.LightningDataModule):
    """The run's data: train/val/test files (JSONL, JSON arrays or shard folders) and their batches.

    The processor comes from the model (the CLI hands it over), so the data layout always follows `--model.arch`."""

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
        image_folder: str | None = None,
        val_image_folder: str | None = None,
        test_image_folder: str | None = None,
        max_length: int | None = DEFAULT_MAX_LENGTH,
        length_policy: LengthPolicy = "skip",
        group_by_length: bool = False,
        pack_to: int = 0,
        processor: Processor | None = None,
    ) -> None:
        """Which files a run reads and how they become batches.

        With no `train` files and a `synth_task`, the data is synthesised (seed 0 train, seed 1 val) into
        `synth_dir`, so a config runs on a fresh machine with nothing downloaded.

        Args:
            train: training data: LLaVA-format JSONL, a JSON array or a shard folder (`mmllm data shard`);
                one path or a list.
            val: validation data, as `train`; its loss is `val_loss`.
            test: test data, as `train`.
            predict: items to predict (an items.jsonl) with `mmllm predict`.
            prompt_template: the question's prompt in predict, with {question}.
            batch_size: samples per batch (per device).
            num_workers: data loader worker processes.
            max_bad_fraction: the fraction (0..1) of training samples that may be bad before the run stops.
            synth_task: with no `train`: synthesise this task (ocr, chart, asr).
            synth_n: training samples to synthesise (the val set gets a tenth, at least 8).
            synth_level: difficulty of the synthesised set (easy, hard).
            synth_dir: folder the synthesised sets are written to and reused from.
            image_folder: where the training files' relative image and audio paths resolve (LLaVA's
                layout); null: each file's own folder.
            val_image_folder: as `image_folder`, for the val files (one split's folder never redirects
                another's paths).
            test_image_folder: as `image_folder`, for the test files.
            max_length: tokens per sample (null: no cap); see `length_policy`.
            length_policy: skip (an over-long sample is a counted bad sample) or truncate (its end is cut off
                and noted; see `ConversationDataset`).
            group_by_length: make training batches of samples of similar estimated length
                (`LengthGroupedSampler`), so they pad less; a JSONL's image headers are then read at load.
            pack_to: N > 0 packs each batch's samples into rows of at most N tokens, with no attention and no
                media shared across samples (`MMLLMProcessor.pack`): the same loss, fewer pad tokens.
            processor: set by the CLI from the model (--model.arch and the encoder decide the data layout);
                `MMLLMProcessor.from_config(cfg)` gives the same one without building a model.
        """
        super().__init__()
        check_settings(max_bad_fraction, max_length, length_policy, pack_to)
        self.synth_jobs = synth_jobs(synth_task, synth_level, synth_n, synth_dir, val is None) if (
            train is None and synth_task) else {}
        self.synth_task, self.synth_level = synth_task, synth_level
        self.files = {"train": train, "val": val, "test": test, **{k: job.file for k, job in self.synth_jobs.items()}}
        self.predict, self.prompt_template = predict, prompt_template
        self.batch_size, self.num_workers, self.pack_to = batch_size, num_workers, pack_to
        self.max_bad_fraction = max_bad_fraction
        self.image_folders = {"train": image_folder, "val": val_image_folder, "test": test_image_folder}
        self.max_length, self.length_policy = max_length, length_policy
        self.group_by_length = group_by_length
        self.processor = processor
        self.datasets: dict[str, ConversationDataset] = {}
        # A training sampler position to start from (set by `train.checkpoint.DataResume`).
        self.resume_position: dict | None = None

    def identity(self) -> dict:
        """What a run reads, as a checkpoint keeps it to compare a resumed run with: the training files and
        their record count, the batch size and the worker count."""
        files = self.files["train"]
        records = len(self.dataset("train")) if files else 0
        return {"train": f"{files} ({records} records)", "batch_size": self.batch_size,
                "num_workers": self.num_workers}

    def transfer_batch_to_device(self, batch: Batch, device, dataloader_idx: int) -> Batch:
        """Only the model inputs move; the bookkeeping (records, ids, reports) stays as it is."""
        if batch.inputs is not None:
            batch.inputs = batch.inputs.to(device)
        return batch

    def prepare_data(self) -> None:
        """Synthesises only the splits this run reads: `predict` and `test` none, `validate` the val set."""
        from .synth import synthesize_once

        stage = getattr(self.trainer.state.fn, "value", None) if self.trainer is not None else None
        splits = {None: ("train", "val"), "fit": ("train", "val"), "validate": ("val",)}.get(stage, ())
        for split in splits:
            if split in self.synth_jobs:
                folder, n, seed = self.synth_jobs[split]
                synthesize_once(self.synth_task, folder, n, seed=seed, level=self.synth_level)

    def dataset(self, split: str) -> ConversationDataset:
        if split not in self.datasets:
            if not self.files[split]:
                raise ValueError(f"no {split} data: pass --data.{split} PATH.jsonl (or a shard folder)")
            if self.processor is None:
                raise ValueError("MMDataModule needs the model's processor (the CLI sets it from the model)")
            ds = ConversationDataset(self.files[split], self.processor, substitute=split == "train",
                                     image_folder=self.image_folders[split], max_length=self.max_length,
                                     length_policy=self.length_policy,
                                     measure_images=self.grouped(split))
            for bad in ds.bad_lines:
                print(f"[mmllm] skipped malformed line {bad}")
            self.datasets[split] = ds
        return self.datasets[split]

    def loader(self, split: str, shuffle: bool) -> StatefulDataLoader:
        """Stateful: Lightning checkpoints the loader's position, its sampler's epoch and its workers' seeds
        with the loop, so a resumed run sees the rest of the epoch in the same order. The sampler shards
        by rank itself, so Lightning keeps it instead of putting in a stateless one."""
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        dataset, seed = self.dataset(split), int(os.environ.get("PL_GLOBAL_SEED", 0))
        if self.grouped(split):
            sampler = LengthGroupedSampler(dataset, dataset.lengths, self.batch_size, world, rank, seed=seed)
        else:
            sampler = EpochSampler(dataset, world, rank, shuffle=shuffle, seed=seed)
        if split == "train" and self.resume_position is not None:
            sampler.load_state_dict(self.resume_position)
            self.resume_position = None
        # Its own generator: each iterator draws its worker and shared seeds when it is made, which would
        # otherwise move the global torch generator (dropout's). A run resumed on an epoch's last batch makes
        # its iterators at other points than the run it continues, so only then would the model's draws differ.
        return StatefulDataLoader(
            dataset, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
            collate_fn=Collator(self.processor, self.pack_to), persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(seed),
        )

    def grouped(self, split: str) -> bool:
        return self.group_by_length and split == "train"

    def train_dataloader(self) -> StatefulDataLoader:
        return self.loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        return self.loader("val", shuffle=False) if self.files["val"] else []  # validation is optional

    def test_dataloader(self) -> DataLoader:
        return self.loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """Eval-format items (`mmllm eval`'s items.jsonl) as prompts. Malformed lines and items that fail to
        load are not dropped here: the `PredictionWriter` reports and counts them beside the predictions.
        Under DDP Lightning shards the items over the ranks without repeating any."""
        from .items import ItemsDataset, PromptCollator  # which imports this module

        if not self.predict:
            raise ValueError("no predict data: pass --data.predict items.jsonl")
        items = ItemsDataset(self.predict, self.processor, self.prompt_template, max_length=self.max_length)
        return DataLoader(items, batch_size=self.batch_size, num_workers=self.num_workers,
                          collate_fn=PromptCollator(self.processor))

