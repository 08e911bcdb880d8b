"""ANLS for DocVQA / InfographicVQA: lmms-eval `anls` (docs/metrics.md)."""
from __future__ import annotations

from collections.abc import Sequence

from .conventions import prepare
from .edit_distance import levenshtein

THRESHOLD = 0.5


def _collapse(text: str) -> str:
    return " ".join(text.strip().lower().split())


def anls(prediction: str | None, answers: str | Sequence[str]) -> float:
    """1 - min normalised edit distance over golds, zeroed below 0.5 (exactly 0.5 is kept).

    The distance compares lowercased, whitespace-collapsed strings, but the length term uses the
    un-normalised gold and stripped prediction via `len(x.upper())` (so "ß" counts 2), as the reference does.
    """
    prediction, golds = prepare(prediction, answers)
    predicted = _collapse(prediction)
    distances = []
    for gold in golds:
        length = max(len(gold.upper()), len(prediction.upper()))
        distances.append(0.0 if length == 0 else levenshtein(_collapse(gold), predicted) / length)
    similarity = 1.0 - min(distances)
    return 0.0 if similarity < THRESHOLD else similarity
