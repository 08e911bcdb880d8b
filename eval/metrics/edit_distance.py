"""The one Levenshtein distance shared by ANLS, CER and WER (docs/metrics.md)."""
from __future__ import annotations

from collections.abc import Hashable, Sequence


def levenshtein(a: Sequence[Hashable], b: Sequence[Hashable]) -> int:
    """Unit-cost insertions, deletions and substitutions between two sequences.

    Strings compare code point by code point, word lists word by word. A transposition costs 2
    (two substitutions), as in the reference harnesses.
    """
    if a == b:
        return 0
    if len(a) < len(b):
        a, b = b, a  # keep the row as short as possible
    if not b:
        return len(a)
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        current = [i]
        for j, y in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]
