"""lmms-eval adapter: `lmms-eval --model mmllm --model_args pretrained=DIR_OR_CKPT --tasks ...`.

lmms-eval (>= 0.6) finds it through the `lmms_eval.models` entry point (`manifest`). lmms-eval is
optional: without it `MMLLMLmms` subclasses a stand-in for lmms-eval's `lmms` base class.
"""
from __future__ import annotations

import os
import warnings
from functools import partial
from itertools import groupby
from types import SimpleNamespace
from typing import Any, Sequence

import torch
from PIL import Image
from tqdm.auto import tqdm

from mmllm.processor import IGNORE_INDEX
from mmllm.sample import SampleError

try:
    from lmms_eval.api.model import lmms as _LmmsBase
except ImportError:

    class _LmmsBase:
        """The part of lmms-eval's `lmms` base class that its evaluator and this adapter use."""

        is_simple = True

        def __init__(self) -> None:
            self._rank, self._world_size = 0, 1
            self.task_dict: dict = {}  # lmms-eval sets task_dict[task][split] = the task's docs

        @property
        def rank(self) -> int:
            return self._rank

        @property
        def world_size(self) -> int:
            return self._world_size


try:  # lmms-eval >= 0.7 passes a GenerationResult's `text` to the task as it is but turns any other
    # response that is not text, a loglikelihood pair included, into its str(): pairs travel inside one
    from lmms_eval.api.instance import GenerationResult as _PairCarrier
except ImportError:
    _PairCarrier = None

MODEL_ID = "mmllm"


def manifest():
    """The `lmms_eval.models` entry point: registers `--model mmllm` (a "simple" model)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.{MMLLMLmms.__name__}")


def truncate(text: str, until: str | Sequence[str] | None) -> str:
    """`text` up to the earliest occurrence of any stop string (empty stop strings are ignored)."""
    stops = [until] if isinstance(until, str) else until or []
    return text[: min((i for s in stops if s and (i := text.find(s)) >= 0), default=len(text))]


class MMLLMLmms(_LmmsBase):
    """An mmllm checkpoint (`save_pretrained` folder or Lightning `.ckpt`) as an lmms-eval model.

    `generate_until` (and, round by round, `generate_until_multi_round`): greedy decoding, batched by
    `max_new_tokens` with the longest prompts first, answers in request order; `loglikelihood`. A request whose
    input the processor rejects (e.g. more `<image>` markers than images) gets an empty answer and a warning
    instead of ending the run.

    Under `torchrun` / `accelerate launch` lmms-eval hands each process its own share of the docs (by the
    launcher's RANK and WORLD_SIZE) and gathers the results through `accelerator`, `device` and `rank`; the
    adapter answers whatever requests it is given.
    """

    is_simple = True

    def __init__(
        self, pretrained: str, batch_size: int | str = 1, device: str | None = None, max_new_tokens: int = 128,
        max_rounds: int = 32, **kwargs: Any
    ) -> None:
        """`device`: by default the launcher's device for this process (its own GPU, else the CPU); a CUDA
        device named for a many-process run becomes this process's GPU, as lmms-eval's own models do."""
        super().__init__()
        # Imported here: lmms-eval imports this module (via the entry point) on every run, for any model.
        from accelerate import Accelerator

        from mmllm.train.load import load_model

        for name, value in (("batch_size", batch_size), ("max_rounds", max_rounds)):
            if not str(value).isdigit() or int(value) < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        ignored = sorted(set(kwargs) - {"max_batch_size"})  # lmms-eval passes it when --max_batch_size is set
        if ignored:
            warnings.warn(f"mmllm: ignoring unknown model_args {ignored}", stacklevel=2)
        self.batch_size, self.max_new_tokens, self.max_rounds = int(batch_size), int(max_new_tokens), int(max_rounds)
        self.accelerator = Accelerator()
        launched = int(os.environ.get("WORLD_SIZE", 1))
        if self.accelerator.num_processes != launched:  # lmms-eval would shard by one count and gather by the other
            raise RuntimeError(
                f"mmllm: launched as {launched} processes but accelerate sees {self.accelerator.num_processes}; "
                "without GPUs launch with `accelerate launch --cpu` or set ACCELERATE_USE_CPU=1 for torchrun")
        self._rank, self._world_size = self.accelerator.process_index, self.accelerator.num_processes
        self._device = self.accelerator.device if device is None else torch.device(device)
        if self._world_size > 1 and self._device.type == "cuda":
            self._device = torch.device("cuda", self.accelerator.local_process_index)
        self.model = load_model(pretrained).to(self._device).eval()

    @property
    def device(self) -> torch.device:
        return self._device

    def generate_until(self, requests: Sequence[Any]) -> list[str]:
        """`requests[i].args` = (context, gen_kwargs, doc_to_visual, doc_id, task, split) -> answers.

        gen_kwargs: `until` (str or list) truncates at the first stop string, `max_new_tokens`
        (default: the constructor's); sampling options are ignored (decoding is greedy).
        """
        args = [r.args for r in requests]
        kwargs = [a[1] or {} for a in args]
        if any(k.get("do_sample") or (k.get("temperature") or 0) > 0 for k in kwargs):
            warnings.warn("mmllm: the task asks for sampling; the adapter decodes greedily", stacklevel=2)
        budgets = [int(k.get("max_new_tokens", self.max_new_tokens)) for k in kwargs]
        lengths = [len(self.model.tokenizer(a[0], add_special_tokens=False).input_ids) for a in args]
        order = sorted(range(len(args)), key=lambda i: (budgets[i], -lengths[i]))
        chunks = []
        for _, group in groupby(order, key=budgets.__getitem__):
            group = list(group)
            chunks += [group[j : j + self.batch_size] for j in range(0, len(group), self.batch_size)]
        answers = [""] * len(args)
        for chunk in tqdm(chunks, desc="mmllm generate_until", disable=self.rank != 0):
            for i, text in zip(chunk, self._answer([args[i] for i in chunk], budgets[chunk[0]])):
                answers[i] = truncate(text, kwargs[i].get("until"))
        return answers

    def _answer(self, args: list[tuple], max_new_tokens: int) -> list[str]:
        """One batch; on a rejected input, each request alone (the rejected one answers "")."""
        try:
            images = [self._images(a) for a in args]
            return self.model.answer([a[0] for a in args], images, max_new_tokens=max_new_tokens)
        except SampleError as exc:
            if len(args) > 1:
                return [self._answer([a], max_new_tokens)[0] for a in args]
            _, _, _, doc_id, task, split = args[0]
            warnings.warn(f"mmllm: {task}/{split} doc {doc_id}: {exc}; answering with an empty string", stacklevel=2)
            return [""]

    def _images(self, arg: tuple) -> list[Image.Image]:
        _, _, doc_to_visual, doc_id, task, split = arg
        visuals = doc_to_visual(self.task_dict[task][split][doc_id])
        visuals = [] if visuals is None else [visuals] if isinstance(visuals, Image.Image) else list(visuals)
        for v in visuals:
            if not isinstance(v, Image.Image):
                raise TypeError(f"mmllm takes PIL images; {task} doc {doc_id} gave a {type(v).__name__} visual")
        return visuals

    def loglikelihood(self, requests: Sequence[Any]) -> list[Any]:
        """`args` = (context, doc_to_target, doc_to_visual, doc_id, task, split) -> (-log P(continuation), greedy?)
        pairs, each inside a `GenerationResult` where lmms-eval has one (>= 0.7).

        The first value is the NEGATED sum of the continuation tokens' log-probs: lmms-eval (0.6 to 0.7.3)
        picks a multiple-choice answer by argmin, for its own models return a loss; its `acc_norm` divides
        this by the choice's length. `greedy`: greedy decoding reproduces the continuation's tokens. The
        continuation is scored as the assistant's answer to the context (without the end-of-answer
        token), one request at a time; a rejected input scores +inf (never chosen) with a warning.
        """
        pairs = [self._loglikelihood(r.args) for r in requests]
        return pairs if _PairCarrier is None else [_PairCarrier(text=pair) for pair in pairs]

    @torch.no_grad()
    def _loglikelihood(self, arg: tuple) -> tuple[float, bool]:
        context, target, _, doc_id, task, split = arg
        continuation = target if isinstance(target, str) else target(self.task_dict[task][split][doc_id])
        processor = self.model.processor
        try:
            images = self._images(arg)
            turns = [{"from": "human", "value": processor.prompt_text(context, images)}, {"from": "gpt", "value": continuation}]
            inputs = processor.collate([processor.encode(turns, images)])
        except SampleError as exc:
            warnings.warn(f"mmllm: {task}/{split} doc {doc_id}: {exc}; scoring +inf", stacklevel=2)
            return float("inf"), False
        logits = self.model(inputs.to(self.device)).logits[0, :-1].float()
        targets = inputs.labels[0, 1:].to(self.device)
        answer = (targets != IGNORE_INDEX).nonzero().squeeze(-1)[:-1]  # the last answer token is the eos
        logprobs = logits[answer].log_softmax(-1)
        chosen = logprobs.gather(-1, targets[answer].unsqueeze(-1)).sum().item()
        return -chosen, bool((logprobs.argmax(-1) == targets[answer]).all())

    def generate_until_multi_round(self, requests: Sequence[Any]) -> list[list[str]]:
        """`args` = (context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split) -> per request,
        the task's result of every round (lmms-eval's round protocol).

        Round 1 answers the context and the doc's visuals. After round r the task's
        `doc_to_text(doc, previous_output=answers, round_idx=r, previous_round_info=info)` returns
        (visuals, context, terminal, round results, info): the next round's input, or on `terminal`
        the request's result. Each round is one single-turn `generate_until` answer (the task carries
        any history in the context it returns). A task that never signals `terminal` is stopped
        after `max_rounds` rounds with a warning naming the doc.
        """
        results = []
        for request in tqdm(requests, desc="mmllm generate_until_multi_round", disable=self.rank != 0):
            context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split = request.args
            doc, rounds, info = self.task_dict[task][split][doc_id], [], None
            for round_idx in range(1, self.max_rounds + 1):
                answer = self.generate_until([SimpleNamespace(args=(context, gen_kwargs, doc_to_visual, doc_id, task, split))])
                visuals, context, terminal, rounds, info = doc_to_text(
                    doc, previous_output=[*rounds, *answer], round_idx=round_idx, previous_round_info=info)
                rounds = list(rounds or [])
                if terminal:
                    break
                doc_to_visual = partial(_constant, visuals)
            else:
                warnings.warn(f"mmllm: {task}/{split} doc {doc_id}: no terminal signal after {self.max_rounds} rounds; "
                              "keeping those rounds (raise max_rounds in --model_args)", stacklevel=2)
            results.append(rounds)
        return results


def _constant(visuals: Any, doc: Any) -> Any:
    """doc_to_visual for a later round: the visuals the task returned for it."""
    return visuals
