"""The tiny causal LM the project pretrains itself (issue 19), so that stage 1 (connector only, LLM frozen) and
stage 2 (SFT) start from an LM that already reads its prompt, as the paper's do.

It learns on synthetic text conversations in the very form the processor gives the multimodal tasks, with the
image (or clip) written out as text between the frame tokens the processor puts around media: "<Image>k3xq
</Image>\\nWhat text is in the image?" -> "k3xq". The LM thus learns the prompt format, the answer vocabulary of
the OCR, chart and ASR tasks, and to read what the frame holds (copy it, count in it, compare in it); stage 1
then has only to make the connector say, in the LM's embedding space, what the image shows. The strings are
random draws of the tasks' alphabets from RNG streams of their own, never the synthetic test sets' labels.

The folder it writes is a plain transformers LM folder (config.json, model.safetensors, the tokenizer):
`--model.llm.name_or_path FOLDER` loads it as it would a real Qwen2. `pretrained_llm` builds it once per
recipe and code (`train/cache.py`).
"""
from __future__ import annotations

import inspect
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mmllm.backbone import build_llm
from mmllm.config import ARCH_PRESETS, LLMConfig, ProcessorConfig
from mmllm.jsonl import write_json
from mmllm.processor import IGNORE_INDEX, MMLLMProcessor
from mmllm.sample import ModelInputs, Sample
from mmllm.tokenizer import AUDIO_CLOSE, AUDIO_OPEN, IMAGE_CLOSE, IMAGE_OPEN, load_tokenizer

from .cache import build_once, parse_request
from .schedule import lr_factor
from .synth import (ASR_QUESTION, ASR_WORDS, CHART_KINDS, TASK_LEVELS, OCR_EASY_CHARS, OCR_QUESTION, PROMPT_TEMPLATES,
                    TITLES, WORDS, chart_data, chart_qa)

REPORT_FILE = "pretrain.json"
# The text the processor writes around an image and around a clip (the tokenizer's first structure tokens).
STREAMS = ("train", "heldout")  # the corpus's two RNG streams: what the LM learns on, what it is scored on
COPY_LENGTH = (2, 10)  # characters of an OCR-like string (the easy test set's: 4-8)
ASR_LENGTH = (1, 8)  # words of a transcript (the test sets': 3-5 easy, 4-8 hard)
REPEAT_CHARS, REPEAT_WORDS = (2, 12), (1, 6)  # a plain line to repeat: characters, or words


@dataclass(frozen=True)
class LLMRecipe:
    """Everything that decides the pretrained LM: the same recipe (and code) gives the same weights.

    Attributes:
        seed: seeds the weights' initialisation and the training documents (document i from (seed, i)).
        steps: optimizer steps.
        copy_docs: the first this many training documents practise copying alone (`COPY_TASKS`); the rest
            cycle through every task. Copying (an induction circuit) forms late in the full mix and the other
            reading tasks build on it: measured at 1800 steps, easy-OCR-like exact match 57 % without this
            start, 100 % with 4800 copy documents.
        batch_size: documents per step.
        seq_len: tokens per packed row: a step's documents are packed into rows of this many (each attends to
            itself only, so the length changes the speed, not the loss); no document may be longer.
        lr: peak learning rate of AdamW.
        warmup_steps: linear warmup; then a cosine decay to 10 % of `lr` (the fit command's schedule).
        weight_decay: AdamW's decoupled weight decay.
        grad_clip: the gradients' global norm is clipped to this.
        model_type: the transformers model type of the LM.
        options: its config values; the default is the tiny configs' LLM (`LLMConfig`).
        user_prefix: text before a user turn, as the processor writes it (`ProcessorConfig`).
        assistant_prefix: text before an assistant turn, likewise.
        heldout_docs: documents of the held-out stream whose answer-token loss is reported.
        heldout_prompts: held-out prompts per task answered greedily for the exact-match accuracy.
    """

    seed: int = 0
    steps: int = 1800
    copy_docs: int = 4800
    batch_size: int = 16
    seq_len: int = 256
    lr: float = 1e-3
    warmup_steps: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    model_type: str = LLMConfig.model_type
    options: dict[str, Any] = field(default_factory=lambda: LLMConfig().options)
    user_prefix: str = ProcessorConfig.user_prefix
    assistant_prefix: str = ProcessorConfig.assistant_prefix
    heldout_docs: int = 256
    heldout_prompts: int = 50

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "seq_len", "heldout_docs", "heldout_prompts"):
            if getattr(self, name) < 1:
                raise ValueError(f"LLMRecipe.{name} must be at least 1, got {getattr(self, name)}")
        for name in ("lr", "grad_clip"):
            if not getattr(self, name) > 0:
                raise ValueError(f"LLMRecipe.{name} must be positive, got {getattr(self, name)}")
        for name in ("copy_docs", "warmup_steps", "weight_decay"):
            if getattr(self, name) < 0:
                raise ValueError(f"LLMRecipe.{name} must be non-negative, got {getattr(self, name)}")


@dataclass(frozen=True)
class Document:
    """One synthetic conversation: a user turn and the assistant's answer (what the loss covers)."""

    task: str
    question: str
    answer: str

    def conversation(self, answered: bool = True) -> list[dict]:
        """In the LLaVA form the processor encodes; without the answer when not `answered` (a prompt)."""
        turns = [{"from": "human", "value": self.question}, {"from": "gpt", "value": self.answer}]
        return turns if answered else turns[:1]


@dataclass(frozen=True)
class Report:
    """What `pretrain.json` holds: the recipe, the losses (answer tokens only), the held-out exact match per
    task and the build's wall time.

    `train_loss_curve` is the training loss averaged over ten equal stretches of the run."""

    recipe: LLMRecipe
    train_loss_first: float
    train_loss_last: float
    train_loss_curve: list[float]
    heldout_loss_start: float
    heldout_loss: float
    accuracy: dict[str, float]
    wall_seconds: float


# ------------------------------------------------------------------------------------------------ corpus


def framed(opening: str, content: str, closing: str, prompt: str) -> str:
    """A user turn as the processor lays out a media item and its prompt, the item written out as text."""
    return f"{opening}{content}{closing}\n{prompt}"


def _chars(rng: random.Random, lengths: tuple[int, int]) -> str:
    """A random string of the OCR alphabet, its length drawn from `lengths`."""
    return "".join(rng.choices(OCR_EASY_CHARS, k=rng.randint(*lengths)))


def _ocr(rng: random.Random) -> tuple[str, str]:
    """Copy the image's text: the OCR task's prompt and answer alphabet."""
    text = _chars(rng, COPY_LENGTH)
    return framed(IMAGE_OPEN, text, IMAGE_CLOSE, PROMPT_TEMPLATES["ocr"].format(question=OCR_QUESTION)), text


def _asr(rng: random.Random) -> tuple[str, str]:
    """Copy the clip's digit words: the ASR task's prompt and vocabulary."""
    words = " ".join(rng.choices(ASR_WORDS, k=rng.randint(*ASR_LENGTH)))
    return framed(AUDIO_OPEN, words, AUDIO_CLOSE, PROMPT_TEMPLATES["asr"].format(question=ASR_QUESTION)), words


def _repeat(rng: random.Random) -> tuple[str, str]:
    """Copy a line of plain text (characters, or chart and digit words): copying outside a media frame."""
    if rng.random() < 0.5:
        text = _chars(rng, REPEAT_CHARS)
    else:
        text = " ".join(rng.choices(WORDS + ASR_WORDS, k=rng.randint(*REPEAT_WORDS)))
    return f"{text}\nRepeat the text above.", text


def _occurrences(rng: random.Random) -> tuple[str, str]:
    """Count one character's occurrences in the image's text."""
    target = rng.choice(OCR_EASY_CHARS)
    times = rng.randint(0, 5)
    chars = rng.choices(OCR_EASY_CHARS.replace(target, ""), k=rng.randint(max(2, times), 10) - times)
    for _ in range(times):
        chars.insert(rng.randint(0, len(chars)), target)
    question = f"How many times does {target} appear in the image?"
    return framed(IMAGE_OPEN, "".join(chars), IMAGE_CLOSE, question), str(times)


def _chart(question_type: str) -> Callable[[random.Random], tuple[str, str]]:
    """A chart written out as its title and "label value" pairs, asked a chart question of `question_type`,
    drawn by the chart set's own data and question makers (easy or hard level, any chart kind)."""

    def make(rng: random.Random) -> tuple[str, str]:
        level = rng.choice(TASK_LEVELS["chart"])
        kind = rng.choice(CHART_KINDS[level])
        labels, values = chart_data(rng, level, kind)
        question, answer = chart_qa(rng, question_type, kind, labels, values)
        title = f"{rng.choice(TITLES)}: " if rng.random() < 0.5 else ""
        content = title + ", ".join(f"{label} {value}" for label, value in zip(labels, values))
        return framed(IMAGE_OPEN, content, IMAGE_CLOSE, PROMPT_TEMPLATES["chart"].format(question=question)), answer

    return make


TASKS: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "ocr": _ocr, "asr": _asr, "repeat": _repeat, "occurrences": _occurrences,
    **{f"chart_{q}": _chart(q) for q in ("count", "largest", "smallest", "value", "difference")},
}
COPY_TASKS = ("ocr", "asr", "repeat")


def document(seed: int, index: int, stream: str = "train", copy_docs: int = 0) -> Document:
    """Document `index` of a stream, from its own RNG seeded by (stream, seed, index). Its task: a copying task
    in turn while `index < copy_docs`, then task `index mod len(TASKS)`, so every stretch of that many
    documents holds each task once."""
    if stream not in STREAMS:
        raise ValueError(f"unknown stream {stream!r}; the corpus's streams are {', '.join(STREAMS)}")
    if index < 0:
        raise ValueError(f"document index must be >= 0, got {index}")
    task = COPY_TASKS[index % len(COPY_TASKS)] if index < copy_docs else list(TASKS)[index % len(TASKS)]
    question, answer = TASKS[task](random.Random(f"llm/{stream}/{seed}/{index}"))
    return Document(task, question, answer)


def text_processor(tokenizer: PreTrainedTokenizerBase, recipe: LLMRecipe) -> MMLLMProcessor:
    """The processor the multimodal model builds, for text alone: it encodes the documents as it encodes a
    training conversation (plain `User: ... Assistant: ...</s>` form, labels on the assistant turns). No media
    ever reach it, so its tile geometry (one 1-pixel tile, one token) is never used."""
    config = ProcessorConfig(user_prefix=recipe.user_prefix, assistant_prefix=recipe.assistant_prefix)
    return MMLLMProcessor(tokenizer, config, ARCH_PRESETS["nvlm_d"], 1, 1, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def encode(processor: MMLLMProcessor, doc: Document, seq_len: int) -> Sample:
    """A document's tokens and labels; one longer than a packed row is refused, naming it."""
    sample = processor.encode(doc.conversation(), [])
    if len(sample.input_ids) > seq_len:
        raise ValueError(f"a {doc.task} document is {len(sample.input_ids)} tokens, over seq_len {seq_len}: "
                         f"raise LLMRecipe.seq_len")
    return sample


# ------------------------------------------------------------------------------------------------ training


def answer_loss(model: PreTrainedModel, inputs: ModelInputs) -> torch.Tensor:
    """The mean loss over the answer tokens of packed rows (each document attends to itself only: transformers
    masks packed documents apart from their positions when given no attention mask and no cache)."""
    return model(input_ids=inputs.input_ids, position_ids=inputs.position_ids, labels=inputs.labels,
                 use_cache=False).loss


@torch.no_grad()
def heldout_loss(model: PreTrainedModel, processor: MMLLMProcessor, recipe: LLMRecipe) -> float:
    """The answer-token loss over the held-out documents, weighted by their answer tokens."""
    total = tokens = 0.0
    for start in range(0, recipe.heldout_docs, recipe.batch_size):
        docs = [document(recipe.seed, i, "heldout")
                for i in range(start, min(start + recipe.batch_size, recipe.heldout_docs))]
        inputs = processor.pack([encode(processor, d, recipe.seq_len) for d in docs], recipe.seq_len)
        n = int((inputs.labels[:, 1:] != IGNORE_INDEX).sum())  # the tokens HF's shifted loss averages over
        total, tokens = total + answer_loss(model, inputs).item() * n, tokens + n
    return total / tokens


@torch.no_grad()
def accuracy(model: PreTrainedModel, processor: MMLLMProcessor, recipe: LLMRecipe) -> dict[str, float]:
    """Exact match of greedy answers on `heldout_prompts` held-out prompts per task, generated as the model's
    `generate` does (left-padded, stopping at the end token, never the image placeholder)."""
    tokenizer, scores = processor.tokenizer, {}
    for t, task in enumerate(TASKS):
        docs = [document(recipe.seed, t + k * len(TASKS), "heldout") for k in range(recipe.heldout_prompts)]
        inputs = processor.collate([processor.encode(d.conversation(answered=False), [], add_generation_prompt=True)
                                    for d in docs])
        longest = max(len(processor.text_ids(d.answer)) for d in docs)
        out = model.generate(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask, do_sample=False,
                             max_new_tokens=longest + 1, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id, suppress_tokens=[processor.image_token_id])
        answers = [processor.decode(row) for row in out[:, inputs.input_ids.shape[1]:].tolist()]
        scores[task] = sum(a == d.answer for a, d in zip(answers, docs)) / len(docs)
    return scores


def pretrain_llm(recipe: LLMRecipe, out: Path) -> Report:
    """Train the LM of `recipe` from scratch and save it, its tokenizer and `pretrain.json` into `out` (new or
    empty). One process, plain torch: AdamW, warmup then cosine decay, the loss on the assistant turns only."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} is not an empty folder: the pretrained LM goes into a new or empty one")
    started = time.perf_counter()
    tokenizer = load_tokenizer(None)
    processor = text_processor(tokenizer, recipe)
    with torch.random.fork_rng(devices=[]):  # the caller's torch RNG is left as it was
        torch.manual_seed(recipe.seed)
        model = build_llm(LLMConfig(model_type=recipe.model_type, options=dict(recipe.options)), tokenizer)
    start_loss = heldout_loss(model.eval(), processor, recipe)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, recipe.steps, recipe.warmup_steps))
    model.train()
    losses = []
    for step in range(recipe.steps):
        first = step * recipe.batch_size
        docs = [document(recipe.seed, i, copy_docs=recipe.copy_docs) for i in range(first, first + recipe.batch_size)]
        loss = answer_loss(model, processor.pack([encode(processor, d, recipe.seq_len) for d in docs], recipe.seq_len))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(f"the training loss is {losses[-1]} at step {step}: lower LLMRecipe.lr")
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    stretch = math.ceil(len(losses) / 10)
    report = Report(
        recipe, losses[0], losses[-1],
        [sum(part) / len(part) for part in (losses[i:i + stretch] for i in range(0, len(losses), stretch))],
        start_loss, heldout_loss(model, processor, recipe), accuracy(model, processor, recipe),
        time.perf_counter() - started)
    write_json(out / REPORT_FILE, asdict(report))
    return report


def read_report(folder: str | Path) -> Report:
    """The `pretrain.json` of a pretrained LM's folder."""
    data = json.loads((Path(folder) / REPORT_FILE).read_text(encoding="utf-8"))
    return Report(**{**data, "recipe": LLMRecipe(**data["recipe"])})


# The code that decides what the LM becomes: this module, the chart questions, the processor's encoding, the tokenizer,
# the LM's construction. Editing one of them builds the part again.
SOURCES = [__file__, *(inspect.getsourcefile(f) for f in (chart_qa, MMLLMProcessor, load_tokenizer, build_llm))]


def pretrained_llm(recipe: LLMRecipe = LLMRecipe(), root: str | Path | None = None) -> Path:
    """The folder of the LM `recipe` makes, built on first use and found after (under `root`, else
    $MMLLM_CACHE, else runs/cache): what `--model.llm.name_or_path` takes."""
    return build_once("llm", recipe, lambda folder: pretrain_llm(recipe, folder), SOURCES, root=root)


# ------------------------------------------------------------------------------------------------ command


def main(argv: Sequence[str] | None = None) -> Report:
    """`mmllm pretrain llm`: build (or find) the pretrained tiny LM and say where it is and how well it does."""
    request = parse_request("mmllm pretrain llm", __doc__.split("\n\n")[0], LLMRecipe, argv)
    recipe = request.recipe
    if request.out is not None:
        folder, report = request.out, pretrain_llm(recipe, request.out)
    else:
        folder = pretrained_llm(recipe, request.root)
        report = read_report(folder)
    print(f"pretrained LLM: {folder}  (--model.llm.name_or_path {folder})")
    print(f"answer-token loss: train {report.train_loss_first:.3f} -> {report.train_loss_last:.3f}, "
          f"held-out {report.heldout_loss_start:.3f} -> {report.heldout_loss:.3f}")
    print("held-out exact match: " + ", ".join(f"{task} {score:.0%}" for task, score in report.accuracy.items()))
    print(f"built in {report.wall_seconds:.0f} s")
    return report


if __name__ == "__main__":
    main()
