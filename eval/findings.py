"""The paper's three findings, checked on a comparison's runs: each difference between two architectures is
measured over paired runs (same seed, same data seed, same variant), with its mean and a 95 % t-interval, and a
finding holds only where every difference it claims points its way with an interval clear of zero.

The claims name architectures because they are the paper's claims about them; the models themselves never
compare arch names (their differences are `ArchKnobs`).
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats


@dataclass(frozen=True)
class Effect:
    """`a - b` over paired runs: mean, 95 % interval (None with a single pair) and the number of pairs."""

    a: str
    b: str
    measure: str
    mean: float
    low: float | None
    high: float | None
    n: int

    def clear(self) -> bool:
        """The interval excludes zero."""
        return self.low is not None and (self.low > 0 or self.high < 0)

    def value(self) -> str:
        """The mean, its interval and the number of pairs, e.g. `+2.7 [+1.2, +4.1], n=3`."""
        interval = f" [{self.low:+.1f}, {self.high:+.1f}]" if self.low is not None else " (one run: no interval)"
        return f"{self.mean:+.1f}{interval}, n={self.n}"

    def describe(self) -> str:
        return f"{self.a} − {self.b} {self.measure}: {self.value()}"


def paired_effect(a: str, b: str, measure: str, pairs: Sequence[tuple[float, float]]) -> Effect:
    """The mean difference of paired values and its 95 % t-interval."""
    diffs = [x - y for x, y in pairs]
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return Effect(a, b, measure, mean, None, None, len(diffs))
    half = stats.t.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return Effect(a, b, measure, mean, mean - half, mean + half, len(diffs))


@dataclass(frozen=True)
class Claim:
    """`a` beats `b` on a measure: higher is better for a score, lower for a cost (`sign` -1)."""

    a: str
    b: str
    measure: str
    sign: int = 1


@dataclass(frozen=True)
class Finding:
    name: str
    claims: tuple[Claim, ...]


OCR, COST = "OCR exact match (%)", "train-step MFLOPs at max tiles"
PAPER_FINDINGS = (
    Finding("NVLM-X is the cheapest at high resolution",
            (Claim("nvlm_x", "nvlm_d", COST, -1), Claim("nvlm_x", "nvlm_h", COST, -1))),
    Finding("NVLM-D is the best at OCR", (Claim("nvlm_d", "nvlm_x", OCR), Claim("nvlm_d", "nvlm_h", OCR))),
    Finding("NVLM-H combines both: better OCR than X, cheaper than D",
            (Claim("nvlm_h", "nvlm_x", OCR), Claim("nvlm_h", "nvlm_d", COST, -1))),
)


@dataclass(frozen=True)
class Verdict:
    finding: str
    holds: str  # "yes", "no" or "not shown"
    effects: tuple[Effect, ...]


def verdicts(measures: dict[str, dict[str, dict[tuple, float]]]) -> list[Verdict]:
    """Each paper finding judged on `measures` (measure -> arch -> {pairing key -> value}). A finding holds when
    every difference it claims is clear in its direction, fails when one is clear against it, and is not shown
    otherwise (an interval that includes zero, a single run); one whose archs were not run is left out."""
    out = []
    for finding in PAPER_FINDINGS:
        effects = []
        for claim in finding.claims:
            a, b = measures[claim.measure].get(claim.a, {}), measures[claim.measure].get(claim.b, {})
            keys = sorted(a.keys() & b.keys())
            if keys:
                effects.append(paired_effect(claim.a, claim.b, claim.measure, [(a[k], b[k]) for k in keys]))
        if len(effects) < len(finding.claims):
            continue
        toward = [e.clear() and e.mean * c.sign > 0 for e, c in zip(effects, finding.claims)]
        against = [e.clear() and e.mean * c.sign < 0 for e, c in zip(effects, finding.claims)]
        holds = "yes" if all(toward) else "no" if any(against) else "not shown"
        out.append(Verdict(finding.name, holds, tuple(effects)))
    return out
