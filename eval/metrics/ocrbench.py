"""OCRBench v1 substring scoring and its per-category aggregation (docs/metrics.md)."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .conventions import prepare

HME_DATASET = "HME100k"

TEXT_RECOGNITION_CATEGORIES = (
    "Regular Text Recognition",
    "Irregular Text Recognition",
    "Artistic Text Recognition",
    "Handwriting Recognition",
    "Digit String Recognition",
    "Non-Semantic Text Recognition",
)
# The keys of lmms-eval's `OCRBench_score`, in its order.
OCRBENCH_CATEGORIES = TEXT_RECOGNITION_CATEGORIES + (
    "Scene Text-centric VQA",
    "Doc-oriented VQA",
    "Key Information Extraction",
    "Handwritten Mathematical Expression Recognition",
)
# lmms-eval divides by the full benchmark size whatever the number of scored samples.
OCRBENCH_SIZE = 1000

# Full-width ASCII U+FF01..U+FF5E -> U+0021..U+007E and the ideographic space -> U+0020. Not NFKC.
_FULL_WIDTH_FOLD = {code: code - 0xFEE0 for code in range(0xFF01, 0xFF5F)} | {0x3000: 0x20}


def _hme_normalise(text: str) -> str:
    """Formula rule: case kept, only U+0020 spaces (and newlines) removed; tabs and NBSP stay."""
    return text.strip().replace("\n", " ").replace(" ", "")


def _text_normalise(text: str) -> str:
    """Default rule: full-width folding, lowercase, strip, newlines become spaces."""
    return text.translate(_FULL_WIDTH_FOLD).lower().strip().replace("\n", " ")


def ocrbench(
    prediction: str | None, answers: str | Sequence[str], *, dataset: str, category: str | None = None
) -> float:
    """1.0 if some normalised gold is a substring of the normalised prediction.

    The formula rule is chosen by `dataset == "HME100k"`, as lmms-eval does; `category` does not
    affect the score (it is accepted so a whole `extra` record can be passed, and checked).
    """
    if category is not None and category not in OCRBENCH_CATEGORIES:
        raise ValueError(f"unknown OCRBench category {category!r}; valid: {', '.join(OCRBENCH_CATEGORIES)}")
    prediction, golds = prepare(prediction, answers)
    normalise = _hme_normalise if dataset == HME_DATASET else _text_normalise
    predicted = normalise(prediction)
    return 1.0 if any(normalise(gold) in predicted for gold in golds) else 0.0


@dataclass(frozen=True)
class OCRBenchSummary:
    """Raw hit counts per category, the two sums OCRBench reports, and lmms-eval's 0-1 accuracy."""

    category_counts: dict[str, int]
    text_recognition: int
    final_score: int

    @property
    def accuracy(self) -> float:
        """lmms-eval's `ocrbench_accuracy`: Final Score / 1000."""
        return self.final_score / OCRBENCH_SIZE


def ocrbench_aggregate(results: Iterable[tuple[str, float]]) -> OCRBenchSummary:
    """Aggregate `(category, 0/1 score)` pairs with fresh counters on every call.

    lmms-eval keeps module-level counters that double-count when aggregating twice; this does not.
    """
    counts = dict.fromkeys(OCRBENCH_CATEGORIES, 0)
    for category, hit in results:
        if category not in counts:
            raise ValueError(f"unknown OCRBench category {category!r}; valid: {', '.join(OCRBENCH_CATEGORIES)}")
        if hit not in (0, 1):
            raise ValueError(f"OCRBench scores are 0 or 1, got {hit!r}")
        counts[category] += int(hit)
    text_recognition = sum(counts[c] for c in TEXT_RECOGNITION_CATEGORIES)
    return OCRBenchSummary(counts, text_recognition, sum(counts.values()))
