"""Per-sample evaluation metrics defined exactly as in docs/metrics.md (lmms-eval is normative).

`score(metric, prediction, answers, **extra)` is the entry point: it strips the raw generation
(`None` -> ""), turns a single gold string into a list, and dispatches to `METRICS[metric]` with
the metric's options (`extra`). Aggregations that are not plain means live here too.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

from .anls import anls
from .chartqa import chartqa_relaxed
from .conventions import prepare
from .error_rate import cer, corpus_cer, corpus_wer, wer
from .exact_match import exact_match
from .ocrbench import (
    OCRBENCH_CATEGORIES,
    TEXT_RECOGNITION_CATEGORIES,
    OCRBenchSummary,
    ocrbench,
    ocrbench_aggregate,
)
from .vqa import normalise_vqa_answer, vqa_accuracy

METRICS: dict[str, Callable[..., float]] = {
    "chartqa_relaxed": chartqa_relaxed,
    "ocrbench": ocrbench,
    "vqa_accuracy": vqa_accuracy,
    "anls": anls,
    "exact_match": exact_match,
    "cer": cer,
    "wer": wer,
}


def score(metric: str, prediction: str | None, answers: Sequence[str] | str, **extra) -> float:
    """Score one sample with `metric`; `extra` holds that metric's options (e.g. `variant`, `dataset`)."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid metrics: {', '.join(METRICS)}")
    prediction, golds = prepare(prediction, answers)
    return METRICS[metric](prediction, golds, **extra)


__all__ = [
    "METRICS",
    "OCRBENCH_CATEGORIES",
    "TEXT_RECOGNITION_CATEGORIES",
    "OCRBenchSummary",
    "anls",
    "cer",
    "chartqa_relaxed",
    "corpus_cer",
    "corpus_wer",
    "exact_match",
    "normalise_vqa_answer",
    "ocrbench",
    "ocrbench_aggregate",
    "score",
    "vqa_accuracy",
    "wer",
]
