"""A few Prometheus metrics in the text exposition format, without the prometheus_client dependency.

Updated from the event loop and from the batch worker thread, so every change takes one lock.
"""

from __future__ import annotations

import threading
from collections import defaultdict

# Request latency buckets in seconds: loopback requests on a small model up to long-document batches.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    if not pairs:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[tuple, float]] = defaultdict(lambda: defaultdict(float))
        self._gauges: dict[str, dict[tuple, float]] = defaultdict(dict)
        self._histograms: dict[str, dict[tuple, list]] = defaultdict(dict)
        self._help: dict[str, tuple[str, str]] = {}
        self._bucket_sets: dict[str, tuple[float, ...]] = {}
        self._declare()

    def _declare(self) -> None:
        counters = {
            "gte_onnx_requests_total": "HTTP requests answered, by route and status",
            "gte_onnx_inputs_total": "Inputs (texts or pairs) embedded or scored",
            "gte_onnx_tokens_total": "Tokens run through the model",
            "gte_onnx_batches_total": "Batches run by the worker",
            "gte_onnx_inference_seconds_total": "Seconds the worker spent running batches",
        }
        for name, text in counters.items():
            self._help[name] = ("counter", text)
        gauges = {
            "gte_onnx_requests_in_flight": "Requests admitted and not yet answered",
            "gte_onnx_queue_inputs": "Inputs waiting for the worker",
            "gte_onnx_model_info": "The served model (value is always 1)",
            "gte_onnx_consecutive_failed_batches": "Model runs in a row that raised (0 after a success)",
        }
        for name, text in gauges.items():
            self._help[name] = ("gauge", text)
        self._help["gte_onnx_request_duration_seconds"] = ("histogram", "HTTP request latency, by route")
        self._bucket_sets["gte_onnx_request_duration_seconds"] = LATENCY_BUCKETS
        self._help["gte_onnx_batch_inputs"] = ("histogram", "Inputs per worker step, merged from concurrent requests")
        self._bucket_sets["gte_onnx_batch_inputs"] = BATCH_SIZE_BUCKETS

    # ---- updates ------------------------------------------------------------------------------------
    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._counters[name][key] += value

    def set(self, name: str, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._gauges[name][key] = float(value)

    def observe(self, name: str, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        buckets = self._bucket_sets[name]
        with self._lock:
            state = self._histograms[name].get(key)
            if state is None:
                state = self._histograms[name][key] = [[0] * len(buckets), 0.0, 0]
            counts = state[0]
            for i, bound in enumerate(buckets):
                if value <= bound:
                    counts[i] += 1
            state[1] += value
            state[2] += 1

    def record_batch(self, inputs: int, tokens: int, seconds: float) -> None:
        self.inc("gte_onnx_batches_total")
        self.inc("gte_onnx_inputs_total", inputs)
        self.inc("gte_onnx_tokens_total", tokens)
        self.inc("gte_onnx_inference_seconds_total", seconds)
        self.observe("gte_onnx_batch_inputs", inputs)

    # ---- exposition ---------------------------------------------------------------------------------
    def render(self) -> str:
        lines: list[str] = []
        with self._lock:
            for name, (kind, text) in self._help.items():
                lines.append(f"# HELP {name} {text}")
                lines.append(f"# TYPE {name} {kind}")
                if kind == "counter":
                    series = self._counters.get(name) or {(): 0.0}
                    for key, value in series.items():
                        lines.append(f"{name}{_labels(key)} {value:g}")
                elif kind == "gauge":
                    for key, value in self._gauges.get(name, {}).items():
                        lines.append(f"{name}{_labels(key)} {value:g}")
                else:
                    buckets = self._bucket_sets[name]
                    for key, (counts, total, n) in self._histograms.get(name, {}).items():
                        for bound, count in zip(buckets, counts):
                            lines.append(f"{name}_bucket{_labels(key + (('le', f'{bound:g}'),))} {count}")
                        lines.append(f"{name}_bucket{_labels(key + (('le', '+Inf'),))} {n}")
                        lines.append(f"{name}_sum{_labels(key)} {total:g}")
                        lines.append(f"{name}_count{_labels(key)} {n}")
        return "\n".join(lines) + "\n"
