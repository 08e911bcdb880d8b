"""ChartQA relaxed accuracy: lmms-eval `relaxed_correctness` (docs/metrics.md)."""
from __future__ import annotations

from collections.abc import Sequence

from .conventions import prepare

MAX_RELATIVE_CHANGE = 0.05


def _to_number(text: str) -> float | None:
    """Python `float` parsing; a trailing run of `%` means a percentage. None when not a number."""
    try:
        if text.endswith("%"):
            return float(text.rstrip("%")) / 100.0
        return float(text)
    except ValueError:
        return None


def _relaxed_correct(prediction: str, gold: str) -> bool:
    pred_num, gold_num = _to_number(prediction), _to_number(gold)
    if pred_num is not None and gold_num is not None and gold_num != 0:
        # Plain IEEE arithmetic, no epsilon: 44.1 vs 42 is 0.05000000000000003 and fails; nan compares false.
        return abs(pred_num - gold_num) / abs(gold_num) <= MAX_RELATIVE_CHANGE
    # A zero gold or any non-number falls back to case-insensitive equality; the gold is not stripped.
    return prediction.lower() == gold.lower()


def chartqa_relaxed(prediction: str | None, answers: str | Sequence[str]) -> float:
    """1.0 if the prediction is within 5 % of a numeric gold (or equal ignoring case), max over golds."""
    prediction, golds = prepare(prediction, answers)
    return max(1.0 if _relaxed_correct(prediction, gold) else 0.0 for gold in golds)
