"""What every phase of the device check shares: its settings, the fail-soft stage runner, the state folder.

A phase is one Python process (prep, install, ort, report); gpu_check.sh runs them in that order. Each
stage is a function of the Run; an exception marks that stage failed (its message printed, the traceback
in the log), and the stages after it still run. A stage that lacks an earlier result raises Skip.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

GTE_ID = "Alibaba-NLP/gte-modernbert-base"
# The dry run's model: the test suite's tiny ModernBERT (real tokenizer, global and local layers).
TINY_OVERRIDES = {"hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 96, "num_hidden_layers": 4}
# fp32 ONNX on CUDA vs PyTorch fp32: the 1e-3 (the CPU export gate is 1e-4; GPU kernels reorder sums).
CUDA_FP32_ATOL = 1e-3


class Skip(Exception):
    """A stage that cannot run because an earlier one did not produce what it needs."""


class Failed(Exception):
    """A stage that ran but whose verdict is a failure (a gate missed): its figures are still kept."""

    def __init__(self, message: str, data: Any):
        super().__init__(message)
        self.data = data


@dataclass
class Settings:
    dry_run: bool = False
    state: str = "/tmp/gte-device"
    out: str = "device-out"
    model: str = GTE_ID
    config_overrides: dict | None = None
    validate_lengths: str = "5,64,129,600"
    token_lengths: tuple[int, ...] = (5, 63, 64, 65, 127, 128, 129, 600, 2048, 8192)
    long_length: int = 8192
    shapes: tuple[str, ...] = ("32x128", "8x512", "1x8192")
    variants: tuple[str, ...] = ("fp16", "q4f16")
    torch_dtypes: tuple[str, ...] = ("fp32", "fp16", "bf16")
    min_repeats: int = 5
    max_repeats: int = 30
    warmups: int = 3
    cell_budget_s: float = 6.0
    payload: str = "slim"

    @property
    def device(self) -> str:
        return "cpu" if self.dry_run else "cuda"

    @property
    def provider(self) -> str:
        return "CPUExecutionProvider" if self.dry_run else "CUDAExecutionProvider"

    @classmethod
    def dry(cls, **changes: Any) -> "Settings":
        """The CPU dry run: tiny model, short inputs, few repeats, CPU execution provider, no torch CUDA."""
        base = dict(
            dry_run=True, config_overrides=dict(TINY_OVERRIDES), validate_lengths="5,129",
            token_lengths=(5, 64, 129, 300), long_length=300, shapes=("4x32", "2x128", "1x300"),
            variants=("fp16",), torch_dtypes=("fp32", "bf16"), min_repeats=2, max_repeats=3, warmups=1,
            cell_budget_s=0.5,
        )
        base.update(changes)
        return cls(**base)

    # Paths inside the state folder (kept between calls on a warm machine, so later calls reuse them).
    @property
    def model_dir(self) -> Path:
        return Path(self.state) / "model"

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.state) / "checkpoint"

    @property
    def torch_dir(self) -> Path:
        return Path(self.state) / "torch"

    @property
    def results_dir(self) -> Path:
        return Path(self.state) / "results"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class StageResult:
    phase: str
    name: str
    status: str  # ok | cached | failed | skipped
    seconds: float
    note: str = ""
    error: str = ""


@dataclass
class Run:
    """One phase: runs stages fail-soft, keeps their results and data, writes results/<phase>.json."""

    phase: str
    settings: Settings
    stages: list[StageResult] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    # Live objects shared between stages of one process (sessions); never written to the JSON.
    objects: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    def log(self, message: str) -> None:
        print(f"[{self.phase} +{time.perf_counter() - self.started:6.1f}s] {message}", flush=True)

    def stage(self, name: str, fn: Callable[["Run"], Any]) -> Any:
        """Run fn(self); its return value (a dict, or (dict, note)) is stored under data[name]."""
        self.log(f"{name} ...")
        start = time.perf_counter()
        status, note, error, value = "ok", "", "", None
        try:
            value = fn(self)
            if isinstance(value, tuple):
                value, note = value
            if isinstance(value, dict) and value.get("cached"):
                status = "cached"
        except Skip as exc:
            status, note = "skipped", str(exc)
        except Failed as exc:
            status, error, value = "failed", str(exc), exc.data
        except KeyboardInterrupt:
            status, error = "failed", "interrupted (time limit)"
            raise
        except BaseException as exc:  # SystemExit from a CLI included: fail soft, keep going
            status = "failed"
            error = f"{type(exc).__name__}: {exc}".strip()
            traceback.print_exc(file=sys.stdout)
        finally:
            seconds = time.perf_counter() - start
            self.stages.append(StageResult(self.phase, name, status, round(seconds, 2), note, error[:2000]))
            if value is not None:
                self.data[name] = value
            tail = note or error
            self.log(f"{name}: {status} in {seconds:.1f} s" + (f" - {tail.splitlines()[0][:300]}" if tail else ""))
        return value

    def need(self, name: str) -> Any:
        """The data of an earlier stage of this phase, or Skip naming it."""
        if name not in self.data:
            raise Skip(f"needs stage {name!r}, which did not finish")
        return self.data[name]

    def save(self) -> Path:
        folder = self.settings.results_dir
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.phase}.json"
        payload = {"phase": self.phase, "stages": [asdict(s) for s in self.stages], "data": self.data}
        path.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n")
        return path


def _jsonable(value: Any) -> Any:
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
    except ImportError:
        pass
    if isinstance(value, (set, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    return repr(value)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def python_env(settings: Settings) -> dict[str, str]:
    """Environment for a child Python: the staged gte_onnx sources, then the onnxruntime-gpu target dir."""
    paths = [str(Path(settings.state) / "src")]
    site = Path(settings.state) / "site"
    if site.is_dir():
        paths.append(str(site))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["PYTHONUNBUFFERED"] = "1"
    return env
