"""What one `gte-onnx bench` run is asked to do (BenchConfig), and the names the run's records use."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .measure import FULL_POLICY, SHORT_POLICY, RepeatPolicy
from .shapes import Shape
from gte_onnx.defaults import CPU

TORCH_PROVIDER = "torch"
TORCH_FP32, TORCH_BF16 = "torch-fp32", "torch-bf16"


@dataclass
class BenchConfig:
    folder: Path
    variants: Sequence[str] | None = None  # None: every variant meant for the provider
    providers: Sequence[str] = (CPU,)
    shapes: Sequence[Shape] | None = None  # None: DEFAULT_SHAPES (minus SHORT_SKIPS in short mode)
    threads: int | None = None
    torch: str | None = None  # "auto", hub id, folder, "random:<model>"
    torch_dtypes: Sequence[str] = ("fp32", "bf16")
    corpus: str | None = None  # "cisi" or a file
    corpus_limit: int | None = None
    batch_size: int = 32
    short: bool = False
    policy: RepeatPolicy | None = None  # None: FULL_POLICY or SHORT_POLICY
    seed: int = 0
    call_timeout_s: float = 1800.0
    # Idle time before every timed run: what the previous call left running has stopped by then.
    gap_s: float = 0.25
    # Thread spinning in the workers: "stop" (spin during a run only), "off" or "on" (see worker.py).
    spinning: str = "stop"
    schedule_seed: int | None = None  # None: the same as `seed`
    twins: str | None = None  # "best" or a variant name: run that contender twice, as two workers
    peers: Sequence[str] = ()  # peer names (peers.parse_peers): other engines built from the same checkpoint
    peers_cache: str | None = None  # None: ~/.cache/gte-onnx/bench-peers
    peers_calibration: int = 300  # calibration texts of the NNCF int8 peer
    fidelity: bool = False  # measure every contender's pooled outputs against PyTorch fp32 on probe inputs
    progress: bool = True
    command: str | None = None

    def resolved_schedule_seed(self) -> int:
        return self.seed if self.schedule_seed is None else self.schedule_seed

    def resolved_policy(self) -> RepeatPolicy:
        return self.policy or (SHORT_POLICY if self.short else FULL_POLICY)

    def corpus_policy(self) -> RepeatPolicy:
        repeats = 2 if self.short else 3
        return RepeatPolicy(min_warmups=1, max_warmups=1, warmup_budget_s=0.0,
                            min_repeats=repeats, max_repeats=repeats, budget_s=0.0)


# What each --spinning mode asks of ONNX Runtime's thread pools. "stop": spin while a run is in progress
# (as the runtime does for users) and stop the moment it returns, so no idle worker takes the cores of
# the one being timed; "off": never spin; "on": ONNX Runtime's default (threads spin on after a run).
SPINNING_MODES = ("stop", "off", "on")
ORT_SPINNING_CONFIG = {
    "stop": {"session.force_spinning_stop": "1"},
    "off": {"session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0"},
    "on": {},
}
