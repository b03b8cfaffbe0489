"""Timing statistics and the interleaved (A/B) repeat loop.

Pure Python + numpy: nothing here knows about ONNX or PyTorch, so the arithmetic can be tested with
injected fake timings.

Why interleave: on a shared machine the speed drifts (other jobs, thermal state, page cache). Running all
repeats of variant A and then all of variant B turns that drift into a fake difference between A and B.
Interleaved rounds (A B C, C B A, B A C, ...) spread the drift over every variant evenly; a seeded random
order per round, mirrored every other round, gives every variant the same neighbours on average, so what
one leaves behind (spinning threads, cache state) does not fall on the same other variant every time.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidInputError
from gte_onnx.inference.speed_ranking import geometric_mean  # noqa: F401 (part of this module's API)


@dataclass(frozen=True)
class Stats:
    """Summary of the timed repeats of one cell (variant x provider x shape), in seconds."""

    n: int
    median: float
    p95: float
    mean: float
    min: float
    max: float
    q1: float
    q3: float

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    @property
    def relative_iqr(self) -> float:
        """IQR / median: the run's own spread, comparable across cells of very different speed."""
        return self.iqr / self.median if self.median > 0 else math.nan

    def to_json(self) -> dict[str, float | int]:
        return {
            "n": self.n,
            "median_s": self.median,
            "p95_s": self.p95,
            "mean_s": self.mean,
            "min_s": self.min,
            "max_s": self.max,
            "q1_s": self.q1,
            "q3_s": self.q3,
            "iqr_s": self.iqr,
        }


def summarize(samples: Sequence[float]) -> Stats:
    """Median, p95, quartiles and extremes of timing samples.

    Percentiles use linear interpolation between order statistics (numpy's default), so with few samples
    p95 lies between the two largest; the JSON keeps the raw samples for anyone who wants another estimator.
    """
    values = np.asarray(list(samples), dtype=np.float64)
    if values.size == 0:
        raise InvalidInputError("no timing samples to summarize")
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise InvalidInputError(f"timing samples must be finite and >= 0, got {values.tolist()}")
    q1, median, q3, p95 = np.percentile(values, [25, 50, 75, 95])
    return Stats(
        n=int(values.size),
        median=float(median),
        p95=float(p95),
        mean=float(values.mean()),
        min=float(values.min()),
        max=float(values.max()),
        q1=float(q1),
        q3=float(q3),
    )


def speed_ratio(reference_seconds: float | None, seconds: float | None) -> float | None:
    """How many times faster a row is than a reference: reference time / row time (2.0 = twice as fast).

    For the same shape this is also the ratio of throughputs (texts/s or tokens/s). None when either side
    is missing (no baseline measured, or the cell failed).
    """
    if reference_seconds is None or seconds is None:
        return None
    if seconds <= 0 or reference_seconds <= 0:
        return None
    return reference_seconds / seconds


@dataclass(frozen=True)
class RepeatPolicy:
    """How many warm-ups and timed repeats each cell gets.

    Warm-ups: at least `min_warmups`, then more while their total is under `warmup_budget_s` (cheap cells
    get several, a 40 s cell gets one). The first run at a new shape grows ORT's memory arena and is far
    slower than the following ones, so it is never timed.
    Repeats: at least `min_repeats`, then more until the cell's timed total reaches `budget_s`, at most
    `max_repeats`. With `heavy_s` set, a cell whose every timed run took at least `heavy_s` seconds stops
    at `heavy_min_repeats` (--short on the full-size model: the 20-40 s cells dominate the run).
    """

    min_warmups: int = 1
    max_warmups: int = 3
    warmup_budget_s: float = 1.0
    min_repeats: int = 5
    max_repeats: int = 50
    budget_s: float = 15.0
    heavy_s: float | None = None
    heavy_min_repeats: int = 2

    def __post_init__(self) -> None:
        if self.min_warmups < 0 or self.max_warmups < self.min_warmups:
            raise InvalidInputError(f"bad warm-up counts {self.min_warmups}..{self.max_warmups}")
        if self.min_repeats < 1 or self.max_repeats < self.min_repeats:
            raise InvalidInputError(f"bad repeat counts {self.min_repeats}..{self.max_repeats}")
        if self.budget_s < 0 or self.warmup_budget_s < 0:
            raise InvalidInputError("time budgets must be >= 0")
        if not 1 <= self.heavy_min_repeats <= self.min_repeats:
            raise InvalidInputError(f"heavy_min_repeats must be in 1..min_repeats, got {self.heavy_min_repeats}")

    def warmup_done(self, warm_times: Sequence[float]) -> bool:
        n = len(warm_times)
        if n < self.min_warmups:
            return False
        return n >= self.max_warmups or sum(warm_times) >= self.warmup_budget_s

    def repeats_done(self, samples: Sequence[float]) -> bool:
        n = len(samples)
        if self.heavy_s is not None and n >= self.heavy_min_repeats and min(samples) >= self.heavy_s:
            return True
        if n < self.min_repeats:
            return False
        return n >= self.max_repeats or sum(samples) >= self.budget_s

    def to_json(self) -> dict[str, float | int]:
        return {
            "min_warmups": self.min_warmups,
            "max_warmups": self.max_warmups,
            "warmup_budget_s": self.warmup_budget_s,
            "min_repeats": self.min_repeats,
            "max_repeats": self.max_repeats,
            "budget_s": self.budget_s,
            "heavy_s": self.heavy_s,
            "heavy_min_repeats": self.heavy_min_repeats,
        }


FULL_POLICY = RepeatPolicy()
# --short: enough repeats for a median and a visible spread, not for a tight p95; runs of 3 s and more
# (the big shapes of the full-size model) get 2 timed repeats after their warm-up.
SHORT_POLICY = RepeatPolicy(min_warmups=1, max_warmups=2, warmup_budget_s=0.5, min_repeats=3,
                            max_repeats=20, budget_s=2.0, heavy_s=3.0, heavy_min_repeats=2)


class RoundOrder:
    """The order of every round of an interleaved cell: seeded, random, balanced, and recorded.

    Round 2k is a fresh random permutation of the runners still active; round 2k+1 is its mirror image.
    Over each pair of rounds every runner then precedes every other exactly once, and sits at each
    position as often as at the mirrored one, so what one runner leaves behind (spinning threads, a
    warm or evicted cache, a throttled core) falls on every other runner equally often. A fixed
    rotation does not do that: each runner always follows the same neighbour.
    `rounds` keeps every round as run, {"phase", "order"}, for the JSON record.
    """

    def __init__(self, seed: int = 0):
        self.seed = seed
        self._rng = random.Random(seed)
        self._mirror_of: list[str] | None = None
        self.rounds: list[dict[str, object]] = []

    def next(self, active: Sequence[str], phase: str) -> list[str]:
        if self._mirror_of is not None and set(active) <= set(self._mirror_of):
            order = [name for name in reversed(self._mirror_of) if name in active]
            self._mirror_of = None
        else:
            order = list(active)
            self._rng.shuffle(order)
            self._mirror_of = order
        self.rounds.append({"phase": phase, "order": order})
        return order

    def phase_done(self) -> None:
        """A new phase (warm-ups -> timed runs) starts with a fresh permutation."""
        self._mirror_of = None


def precedence_counts(rounds: Sequence[Sequence[str]]) -> dict[tuple[str, str], int]:
    """(a, b) -> in how many rounds a ran before b: the order statistic a fair schedule balances."""
    counts: dict[tuple[str, str], int] = {}
    for order in rounds:
        for i, a in enumerate(order):
            for b in order[i + 1:]:
                counts[(a, b)] = counts.get((a, b), 0) + 1
    return counts


@dataclass
class CellOutcome:
    """What the interleaved loop gathered for one runner."""

    warmups: list[float]
    samples: list[float]
    error: str | None = None


# A runner performs one call and returns its duration in seconds, as measured where the work happens
# (inside the worker process, around the session call only).
Runner = Callable[[], float]


def interleave(
    runners: Mapping[str, Runner],
    policy: RepeatPolicy,
    on_call: Callable[[str, str], None] | None = None,
    gap_s: float = 0.0,
    sleep: Callable[[float], None] = time.sleep,
    order: RoundOrder | None = None,
) -> dict[str, CellOutcome]:
    """Warm up, then time every runner, each round in the order `order` gives, until each one's policy is met.

    A runner that raises is recorded with its error and leaves the rounds; the others go on.
    `gap_s` is an idle pause before every timed run (and before a warm-up of a different runner than the
    last), so that whatever the previous call left running (a thread pool that spins on, a pending page
    write-back) has stopped before the clock starts.
    `on_call(name, phase)` is told of each call ("warmup" or "repeat"), for progress display.
    """
    order = order or RoundOrder()
    outcomes = {name: CellOutcome(warmups=[], samples=[]) for name in runners}
    last: list[str | None] = [None]

    def call(name: str, phase: str) -> None:
        if gap_s > 0 and (phase == "repeat" or (last[0] is not None and last[0] != name)):
            sleep(gap_s)
        last[0] = name
        outcome = outcomes[name]
        try:
            seconds = float(runners[name]())
        except Exception as exc:  # noqa: BLE001 - one failing variant must not end the whole bench
            outcome.error = f"{type(exc).__name__}: {exc}"
            return
        finally:
            if on_call is not None:
                on_call(name, phase)
        if not math.isfinite(seconds) or seconds < 0:
            outcome.error = f"runner returned an invalid duration {seconds!r}"
            return
        (outcome.warmups if phase == "warmup" else outcome.samples).append(seconds)

    names = list(runners)
    for phase, done, bucket in (
        ("warmup", policy.warmup_done, "warmups"),
        ("repeat", policy.repeats_done, "samples"),
    ):
        order.phase_done()
        while True:
            active = [n for n in names if outcomes[n].error is None and not done(getattr(outcomes[n], bucket))]
            if not active:
                break
            for name in order.next(active, phase):
                call(name, phase)
    return outcomes
