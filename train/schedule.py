"""Learning-rate schedules as multipliers of the peak rate (for `torch.optim.lr_scheduler.LambdaLR`): plain
functions of the step, so the fit command and the pretraining of the parts share them without Lightning."""
from __future__ import annotations

import math


def lr_factor(step: int, total: int, warmup: int, decay: int | None = None) -> float:
    """The fit command's schedule: linear warmup, a hold when `decay` is set, then a cosine to 10 %."""
    warmup = min(warmup, total // 2)
    if step < warmup:
        return (step + 1) / (warmup + 1)
    start = warmup if decay is None else max(warmup, total - decay)
    progress = min(1.0, max(0, step - start) / max(1, total - start))
    return 0.1 + 0.45 * (1 + math.cos(math.pi * progress))


def warmup_cosine_to_zero(step: int, total: int, warmup: int) -> float:
    """The tower's contrastive pretraining schedule: linear warmup to the peak, then a cosine all the way to 0."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
