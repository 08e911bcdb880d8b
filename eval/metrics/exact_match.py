"""Exact match as lmms-eval's port of HF `evaluate` exact_match (docs/metrics.md)."""
from __future__ import annotations

import string
from collections.abc import Sequence

from .conventions import prepare

# Only ASCII punctuation: Unicode dashes and quotes are kept, as in the reference.
_DROP_PUNCTUATION = str.maketrans("", "", string.punctuation)


def exact_match(
    prediction: str | None,
    answers: str | Sequence[str],
    *,
    ignore_case: bool = False,
    ignore_punctuation: bool = False,
) -> float:
    """1.0 if the stripped prediction equals some (unstripped) gold after the optional case/punctuation folding."""
    prediction, golds = prepare(prediction, answers)

    def normalise(text: str) -> str:
        if ignore_case:
            text = text.lower()
        if ignore_punctuation:
            text = text.translate(_DROP_PUNCTUATION)
        return text

    predicted = normalise(prediction)
    return 1.0 if any(normalise(gold) == predicted for gold in golds) else 0.0
