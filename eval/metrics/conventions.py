"""Input conventions every metric shares (docs/metrics.md)."""
from __future__ import annotations

from collections.abc import Sequence


def strip_generation(prediction: str | None) -> str:
    """What the lmms-eval harness does to every generation before scoring: `None` -> "", then `str.strip()`."""
    if prediction is None:
        return ""
    if not isinstance(prediction, str):
        raise TypeError(f"prediction must be a string or None, got {type(prediction).__name__}")
    return prediction.strip()


def gold_list(answers: str | Sequence[str]) -> list[str]:
    """Golds as a non-empty list of strings (a single string is a list of one); golds are never stripped here."""
    if not isinstance(answers, (str, list, tuple)):  # a dict would be scored against its keys, a set in any order
        raise TypeError(f"gold answers must be a string or a list of strings, got {type(answers).__name__}")
    golds = [answers] if isinstance(answers, str) else list(answers)
    if not golds:
        raise ValueError("at least one gold answer is required")
    for gold in golds:
        if not isinstance(gold, str):
            raise TypeError(f"gold answers must be strings, got {type(gold).__name__}: {gold!r}")
    return golds


def prepare(prediction: str | None, answers: str | Sequence[str]) -> tuple[str, list[str]]:
    """The stripped prediction and the gold list; idempotent, so metrics may call it on prepared input."""
    return strip_generation(prediction), gold_list(answers)
