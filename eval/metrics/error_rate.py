"""Character and word error rates, per sample and over a corpus (docs/metrics.md).

Matches jiwer's defaults for CER (strip, then code points) with no other normalisation. WER
strips and splits on whitespace (`str.split()`). An empty reference makes the rate undefined,
so it is rejected as a data error rather than scored. With several golds the per-sample rate is
the minimum over golds (a project convention; jiwer takes one reference).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from fractions import Fraction

from .conventions import prepare
from .edit_distance import levenshtein

Units = Callable[[str], Sequence[str]]


def _characters(text: str) -> str:
    return text.strip()


def _words(text: str) -> list[str]:
    return text.split()


def _edits(prediction: str, golds: list[str], units: Units) -> tuple[int, int]:
    """(edit count, reference length) for the gold with the lowest rate, the first one on ties."""
    best: tuple[int, int] | None = None
    hypothesis = units(prediction)
    for gold in golds:
        reference = units(gold)
        if not reference:
            raise ValueError(f"empty reference {gold!r}: the error rate is undefined; drop or fix the item")
        pair = (levenshtein(reference, hypothesis), len(reference))
        if best is None or Fraction(*pair) < Fraction(*best):
            best = pair
    assert best is not None  # prepare() guarantees at least one gold
    return best


def _rate(prediction: str | None, answers: str | Sequence[str], units: Units) -> float:
    prediction, golds = prepare(prediction, answers)
    edits, length = _edits(prediction, golds, units)
    return edits / length


def _corpus_rate(
    predictions: Sequence[str | None], references: Sequence[str | Sequence[str]], units: Units
) -> float:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("the corpus error rate of no samples is undefined")
    total_edits = total_length = 0
    for prediction, answers in zip(predictions, references):
        edits, length = _edits(*prepare(prediction, answers), units)
        total_edits += edits
        total_length += length
    return total_edits / total_length


def cer(prediction: str | None, answers: str | Sequence[str]) -> float:
    """Character error rate: edit distance / reference length after stripping; can exceed 1."""
    return _rate(prediction, answers, _characters)


def wer(prediction: str | None, answers: str | Sequence[str]) -> float:
    """Word error rate: word-level edit distance / number of reference words; can exceed 1."""
    return _rate(prediction, answers, _words)


def corpus_cer(predictions: Sequence[str | None], references: Sequence[str | Sequence[str]]) -> float:
    """Corpus CER, sum of edits / sum of reference lengths (what jiwer returns for lists).

    This is not the mean of per-sample CERs. A sample with several golds contributes the gold
    that its per-sample CER picks.
    """
    return _corpus_rate(predictions, references, _characters)


def corpus_wer(predictions: Sequence[str | None], references: Sequence[str | Sequence[str]]) -> float:
    """Corpus WER, sum of word edits / sum of reference word counts; not the mean of per-sample WERs."""
    return _corpus_rate(predictions, references, _words)
