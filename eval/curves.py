"""Quality against cost during training: the loss per step, and the test scores every so many steps beside the
training steps, counted FLOPs and wall time spent to reach them, across all the stages of a protocol.

FLOPs are counted, not estimated: torch's `FlopCounterMode` (matrix products, convolutions, attention) counts the
forward, backward and optimizer step of every `count_every`-th training step; the other steps are credited with
the mean of the counted ones (their batches are drawn alike). Frozen parts compute no weight gradients, so a stage
that trains the connector alone counts fewer FLOPs per step than one that trains the LLM too.
Wall time is the fit's own: validation, these scorings and the counting's overhead are left out (a counted step
is credited with the mean time of the uncounted ones).
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import lightning as L
from torch.utils.flop_counter import FlopCounterMode

COUNT_EVERY = 20  # steps between FLOP counts: counting slows a tiny model's step ~1.8x


@dataclass
class CurvePoint:
    """The test scores after `step` training steps of all stages, and what reaching them cost."""

    step: int
    stage: str
    flops: float
    seconds: float
    scores: dict[str, float]


@dataclass(eq=False)  # compared by identity, as Lightning's callbacks are
class TrainingRecord(L.Callback):
    """One run's loss per step and its quality curve, carried over the fits of every stage in turn.

    `score(model, tag)` scores the model (in eval mode; the module's training modes are restored after) and
    returns the test set scores; it runs every `every` steps counted over all stages (0: never mid-stage) and at
    the end of each stage. `stage` names the fit that is running: set it before each one. FLOPs and seconds are
    kept per stage (a frozen stage's steps cost less) and summed."""

    score: Callable[[object, str], dict[str, float]]
    every: int = 0
    count_every: int = COUNT_EVERY
    stage: str = ""
    losses: list[tuple[int, float]] = field(default_factory=list)
    points: list[CurvePoint] = field(default_factory=list)
    steps: int = 0  # of the finished stages
    flops_before: float = 0.0  # of the finished stages
    seconds_before: float = 0.0  # of the finished stages

    def __post_init__(self) -> None:
        self._counter: FlopCounterMode | None = None
        self._start = self._batch_start = self._paused = self._pause_from = 0.0
        self._flops: list[int] = []  # this stage's counted steps
        self._step_seconds: list[float] = []  # this stage's uncounted steps

    # -- the clock and the counter ----------------------------------------------------------------
    def on_train_start(self, trainer, pl_module) -> None:
        self._start, self._paused, self._flops, self._step_seconds = time.perf_counter(), 0.0, [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._batch_start = time.perf_counter()
        if trainer.global_step % self.count_every == 0:
            self._counter = FlopCounterMode(display=False)
            self._counter.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        took = time.perf_counter() - self._batch_start
        if self._counter is not None:
            self._counter.__exit__(None, None, None)
            self._flops.append(self._counter.get_total_flops())
            self._counter = None
            self._paused += took
        else:
            self._step_seconds.append(took)
        self.losses.append((self.steps + trainer.global_step, float(outputs["loss"])))
        if self.every and (self.steps + trainer.global_step) % self.every == 0:
            self.add_point(pl_module, trainer.global_step)

    def on_validation_start(self, trainer, pl_module) -> None:
        self._pause_from = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        self._paused += time.perf_counter() - self._pause_from

    def on_train_end(self, trainer, pl_module) -> None:
        if not self.points or self.points[-1].step != self.steps + trainer.global_step:
            self.add_point(pl_module, trainer.global_step)
        self.flops_before, self.seconds_before = self.flops(trainer.global_step), self.seconds()
        self.steps += trainer.global_step

    # -- what the curve holds ---------------------------------------------------------------------
    def flops(self, stage_steps: int) -> float:
        """Training FLOPs so far: the finished stages', then this stage's mean counted step times its steps."""
        return self.flops_before + (statistics.fmean(self._flops) * stage_steps if self._flops else 0.0)

    def seconds(self) -> float:
        """Training wall time so far, this stage's counted steps credited at its uncounted steps' mean."""
        mean = statistics.fmean(self._step_seconds) if self._step_seconds else 0.0
        return self.seconds_before + time.perf_counter() - self._start - self._paused + mean * len(self._flops)

    def add_point(self, pl_module, stage_steps: int) -> None:
        seconds = self.seconds()
        start = time.perf_counter()
        was_training = pl_module.training
        scores = self.score(pl_module.eval().model, f"step-{self.steps + stage_steps}")
        pl_module.train(was_training)  # the module's own: its frozen parts go back to eval mode
        self._paused += time.perf_counter() - start
        self.points.append(CurvePoint(self.steps + stage_steps, self.stage, self.flops(stage_steps),
                                      round(seconds, 3), scores))
