"""ONNX Runtime sessions: providers, threads, variant choice, and the graph's declared inputs.

onnxruntime is imported here and only here, inside functions, so `import gte_onnx` works without it and
the error names the install command.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from gte_onnx.inference.cpu import physical_cores
from gte_onnx.errors import (
    InferenceError,
    IntegrityError,
    ModelFolderError,
    ProviderError,
    UnverifiedVariantWarning,
    VariantError,
)
from gte_onnx.inference import kernel_family
from gte_onnx.inference.kernel_family import NATIVE, Route, folder_records, route_for, verification
from gte_onnx.folder.manifest import Manifest, Variant
from gte_onnx.folder.integrity import verify_variant
from gte_onnx.defaults import CPU, CUDA
from gte_onnx.inference.ort import INSTALL_HINT, import_onnxruntime  # noqa: F401 (INSTALL_HINT: part of this module's API)

PROVIDER_ALIASES = {"cpu": CPU, "cuda": CUDA, "gpu": CUDA}
def installed_ort_wheels() -> list[str]:
    """Names of the onnxruntime distributions installed side by side (more than one breaks CUDA)."""
    import importlib.metadata  # ~0.1 s to import: only the CUDA paths need it

    names = []
    for dist in ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino"):
        try:
            importlib.metadata.version(dist)
            names.append(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return names


def _canonical(name: str) -> str:
    return PROVIDER_ALIASES.get(name.lower(), name) if isinstance(name, str) else name


def resolve_providers(requested: Sequence[str] | str | None) -> list[str]:
    """The provider list to give ONNX Runtime.

    None: CUDA when onnxruntime-gpu and a GPU are present, else CPU. A requested provider that is not
    available is an error, never a silent fallback.
    """
    ort = import_onnxruntime()
    available = ort.get_available_providers()
    if requested is None:
        if CUDA in available and _cuda_device_present():
            if len(installed_ort_wheels()) > 1:
                raise ProviderError(_missing_provider_message(CUDA, available, both_installed=True))
            return [CUDA, CPU]
        return [CPU]
    if isinstance(requested, str):
        requested = [requested]
    resolved = []
    for name in requested:
        canonical = _canonical(name)
        if canonical not in available:
            raise ProviderError(_missing_provider_message(canonical, available))
        if canonical not in resolved:
            resolved.append(canonical)
    if not resolved:
        raise ProviderError("providers is empty; pass None for the default or a list such as ['cpu']")
    if CUDA in resolved and len(installed_ort_wheels()) > 1:
        raise ProviderError(_missing_provider_message(CUDA, available, both_installed=True))
    if CUDA in resolved and CPU not in resolved:
        resolved.append(CPU)  # ORT places the few ops CUDA lacks on the CPU
    return resolved


def _preload_cuda_libraries(ort) -> None:
    """onnxruntime-gpu finds CUDA/cuDNN from pip's nvidia-* wheels only once they are loaded; torch does that
    on import, and a torch-free process must ask (onnxruntime >= 1.21). System-wide CUDA needs nothing."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    try:
        preload()
    except Exception:  # nothing to preload (system CUDA) is fine; a real gap is reported by the session
        pass


def _cuda_device_present() -> bool:
    """True when the NVIDIA driver shows a GPU (cheap: no CUDA context is created)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return any(Path("/dev").glob("nvidia[0-9]*")) or Path("/proc/driver/nvidia/gpus").is_dir()


def _missing_provider_message(provider: str, available: Sequence[str], both_installed: bool = False) -> str:
    wheels = installed_ort_wheels()
    msg = f"execution provider {provider} is not available (this onnxruntime offers {list(available)})."
    if both_installed:
        msg = f"execution provider {provider} cannot be trusted here."
    if provider == CUDA:
        if len(wheels) > 1:
            msg += (
                f" Several onnxruntime wheels are installed at once ({', '.join(wheels)}), which breaks the CUDA "
                "provider: pip uninstall -y onnxruntime onnxruntime-gpu && pip install 'gte-onnx[gpu]'"
            )
        elif "onnxruntime-gpu" not in wheels:
            msg += " CUDA needs onnxruntime-gpu: pip uninstall -y onnxruntime && pip install 'gte-onnx[gpu]'"
        else:
            msg += (
                " onnxruntime-gpu is installed, so the CUDA/cuDNN libraries are probably missing or mismatched: "
                "pip install 'onnxruntime-gpu[cuda,cudnn]' brings matching ones (the PyPI wheels need CUDA 13 "
                "and cuDNN 9), or install them system-wide."
            )
    return msg


@dataclass(frozen=True)
class VariantChoice:
    """The variant picked, and for `auto` the faster variants passed over because their fidelity was not
    measured on this CPU's kernel family (each: (name, why))."""

    variant: Variant
    passed_over: tuple[tuple[str, str], ...] = ()


def choose_variant(manifest: Manifest, requested: str, provider: str, family: str | None = None) -> Variant:
    return variant_choice(manifest, requested, provider, family).variant


def variant_choice(manifest: Manifest, requested: str, provider: str, family: str | None = None) -> VariantChoice:
    """`variant="auto"`: the fastest variant on this provider whose fidelity passes its gate on this CPU.

    Speed comes from the manifest's measured speed_ranking (written by `gte-onnx bench --record`); without
    a measurement for this provider the choice is fp32, the one variant whose fidelity is proven by export.
    On the CPU a quantized variant also needs its gate measured on this CPU's kernel family, or on one that
    computes the same numbers (kernel_family.verification): int8 and q4 move between families.
    """
    if requested != "auto":
        return VariantChoice(manifest.variant(requested))
    if provider == CPU and family is None:
        family = kernel_family.detect_family()
    passed_over = []
    for name in manifest.speed_ranking.get(provider, ()):
        variant = manifest.variants.get(name)
        if variant is None or not variant.passes_gate() or not _suits(variant, provider):
            continue
        if provider == CPU:
            verdict = verification(variant, family)
            if not verdict.verified:
                passed_over.append((name, _unverified_reason(variant, family, verdict)))
                continue
        return VariantChoice(variant, tuple(passed_over))
    if "fp32" in manifest.variants:
        return VariantChoice(manifest.variants["fp32"], tuple(passed_over))
    passing = [v for v in manifest.variants.values() if v.passes_gate()]
    if not passing:
        raise VariantError("no variant in this folder passes its fidelity gate; name one explicitly")
    return VariantChoice(passing[0], tuple(passed_over))


def _unverified_reason(variant: Variant, family: str, verdict) -> str:
    if verdict.state == "failed":
        return f"failed its fidelity gate on {family} ({verdict.measured_on} measurement)"
    measured = sorted(folder_records(variant)) or ["a CPU family not recorded"]
    return (f"its fidelity was measured on {', '.join(measured)}, and this CPU ({family}) computes it "
            f"differently; measure it here once with `gte-onnx verify FOLDER`")


def _at_least(level: str, minimum: str | None) -> str:
    """The higher of two graph optimisation levels ("none" < "basic" < "extended" < "all")."""
    order = ("none", "basic", "extended", "all")
    if minimum is None or level not in order:
        return level
    return max(level, minimum, key=order.index)


def _suits(variant: Variant, provider: str) -> bool:
    return not variant.providers or provider in variant.providers


class OnnxModel:
    """One ONNX file of a model folder in an InferenceSession, fed only the inputs its graph declares."""

    def __init__(
        self,
        folder: str | Path,
        manifest: Manifest,
        variant: str = "auto",
        providers: Sequence[str] | str | None = None,
        threads: int | None = None,
        verify: bool = True,
        session_config: Mapping[str, str] | None = None,
    ):
        """`session_config`: extra ONNX Runtime session config entries (key -> value, e.g.
        {"session.force_spinning_stop": "1"}), applied after this runtime's own settings."""
        ort = import_onnxruntime()
        ort.set_default_logger_severity(3)  # provider-loading chatter; failures surface as typed errors
        self.folder = Path(folder)
        self.manifest = manifest
        self.providers = resolve_providers(providers)
        self.provider = self.providers[0]
        if self.provider == CUDA:
            _preload_cuda_libraries(ort)
        self.family = kernel_family.detect_family() if self.provider == CPU else None
        choice = variant_choice(manifest, variant, self.provider, self.family)
        self.variant = choice.variant
        self.passed_over = choice.passed_over
        for name, why in choice.passed_over[:1]:
            warnings.warn(f"variant='auto' picked {self.variant.name!r}, not {name!r}: {why}",
                          UnverifiedVariantWarning, stacklevel=4)
        # The CPU route for this variant on this family (e.g. int8 on x86 without VNNI: u8 weights).
        self.route: Route = route_for(self.variant, self.family) if self.family else NATIVE
        path = verify_variant(self.folder, self.variant) if verify else self.folder / self.variant.file
        if self.variant.name.startswith("fp16") and self.provider == CPU:
            warnings.warn(
                f"variant {self.variant.name!r} runs on the CPU execution provider, where fp16 is slow; "
                "use fp32 or int8 on CPUs",
                RuntimeWarning,
                stacklevel=4,  # the caller of Embedder(...) / Reranker(...)
            )
        self.threads = int(threads) if threads else physical_cores()
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        # The memory pattern pre-plans one arena block per seen shape; with long inputs that keeps the
        # 8192-token plan alive next to later ones (1.61 GB peak vs 1.31 GB at 1x8192), at no speed cost.
        options.enable_mem_pattern = False
        level = _at_least(self.variant.recipe.get("session_optimization", "all"), self.route.optimization)
        for key, value in self.route.session_config.items():
            options.add_session_config_entry(key, value)
        options.graph_optimization_level = {
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        }.get(level, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        for key, value in (session_config or {}).items():
            options.add_session_config_entry(str(key), str(value))
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=self.providers)
        except Exception as exc:  # ORT raises its own exception types; name the file and the cause
            text = str(exc)
            if self.provider != CPU and ("cuda" in text.lower() or "provider" in text.lower()):
                raise ProviderError(
                    f"{self.provider} failed to start: {text}. " + _missing_provider_message(self.provider, [])
                ) from None
            if "External data path" in text or "external data" in text.lower():
                raise IntegrityError(
                    f"{self.variant.file}: its external data points outside the model folder or is unreadable: {text}"
                ) from None
            raise ModelFolderError(f"onnxruntime cannot load {path}: {text}") from None
        active = self.session.get_providers()
        if self.provider not in active:
            raise ProviderError(
                f"{self.provider} was requested but onnxruntime fell back to {active}; "
                + _missing_provider_message(self.provider, ort.get_available_providers())
            )
        self.input_names = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if manifest.output not in outputs:
            raise ModelFolderError(f"{path.name} has no output {manifest.output!r}; it has {outputs}")
        self.output_name = manifest.output
        unknown = set(self.input_names) - {"input_ids", "attention_mask", "token_type_ids", "position_ids"}
        if unknown:
            raise ModelFolderError(f"{path.name} declares inputs this runtime cannot feed: {sorted(unknown)}")
        check_graph_signature(self.session, manifest, self.variant.file)

    def feed(self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Only what the graph declares (fastembed's rule): BERT takes token_type_ids, ModernBERT does not."""
        available: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self.input_names:
            available["token_type_ids"] = token_type_ids if token_type_ids is not None else np.zeros_like(input_ids)
        if "position_ids" in self.input_names:
            available["position_ids"] = np.broadcast_to(
                np.arange(input_ids.shape[1], dtype=np.int64), input_ids.shape
            ).copy()
        return {name: available[name] for name in self.input_names}

    def run(self, feed: Mapping[str, np.ndarray]) -> np.ndarray:
        """The graph's output for one batch. ONNX Runtime's own exceptions (Fail, InvalidArgument,
        RuntimeException, ...) and an output of the wrong shape become an InferenceError naming the file."""
        try:
            if self.provider == CUDA:
                out = self._run_bound(feed)
            else:
                out = self.session.run([self.output_name], dict(feed))[0]
        except Exception as exc:  # onnxruntime's exception types share no base class but Exception
            raise InferenceError(
                f"{self.variant.file} (variant {self.variant.name!r}) failed on {self.provider}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        check_output(out, feed["input_ids"].shape, self.manifest, self.variant.file)
        return out

    def _run_bound(self, feed: Mapping[str, np.ndarray]) -> np.ndarray:
        """I/O binding on CUDA: inputs are copied to the device once and the output is allocated by ORT
        on the device, then copied back in one transfer, instead of ORT staging every tensor through
        pageable host buffers."""
        binding = self.session.io_binding()
        for name, array in feed.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        binding.bind_output(self.output_name, "cuda", 0)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]


# ---- the graph's signature against the manifest -----------------------------------------------------
INPUT_TYPES = {"tensor(int64)"}
OUTPUT_TYPES = {"tensor(float)", "tensor(float16)", "tensor(double)"}


def output_rank(manifest: Manifest) -> int:
    """(batch, sequence, dim) for an embedding graph the runtime pools; (batch, dim) for a graph that pools
    itself: rerank logits, or an embedding folder whose pooling is "none"."""
    return 3 if manifest.task == "embedding" and manifest.pooling != "none" else 2


def _describe_shape(shape: Sequence[Any]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def check_graph_signature(session, manifest: Manifest, file: str) -> None:
    """What the graph declares (input and output types, output rank and width) against the manifest, so a
    mismatched file fails when it is loaded instead of at the first encode."""
    for arg in session.get_inputs():
        if arg.type not in INPUT_TYPES:
            raise ModelFolderError(
                f"{file}: input {arg.name!r} is {arg.type}; this runtime feeds int64 token ids and masks"
            )
    out = next(o for o in session.get_outputs() if o.name == manifest.output)
    if out.type not in OUTPUT_TYPES:
        raise ModelFolderError(f"{file}: output {out.name!r} is {out.type}, not a float tensor")
    shape = out.shape
    if not isinstance(shape, (list, tuple)) or not shape:
        return  # no static shape recorded: check_output checks the first batch instead
    rank = output_rank(manifest)
    if len(shape) != rank:
        raise ModelFolderError(_rank_message(file, out.name, _describe_shape(shape), len(shape), manifest))
    width = shape[-1]
    if isinstance(width, int) and width != manifest.dim:
        raise ModelFolderError(
            f"{file}: output {out.name!r} is {_describe_shape(shape)}, {width} wide, but the manifest's dim is "
            f"{manifest.dim}"
        )


def _rank_message(file: str, name: str, shape: str, rank: int, manifest: Manifest) -> str:
    if manifest.task == "embedding" and manifest.pooling == "none":
        want = '(batch, dim): pooling "none" means the graph pools'
    elif manifest.task == "embedding":
        want = f"(batch, sequence, dim) for {manifest.pooling} pooling"
    else:
        want = "(batch, labels) for a reranker"
    return f"{file}: output {name!r} has rank {rank} {shape}; the manifest needs {want}"


def check_output(out: Any, input_shape: tuple[int, ...], manifest: Manifest, file: str) -> None:
    """One batch's output: rank, batch size, sequence length and width as the manifest promises."""
    shape = getattr(out, "shape", None)
    if not isinstance(out, np.ndarray) or shape is None:
        raise InferenceError(f"{file}: output {manifest.output!r} is {type(out).__name__}, not a tensor")
    rank = output_rank(manifest)
    if out.ndim != rank:
        raise InferenceError(_rank_message(file, manifest.output, str(tuple(shape)), out.ndim, manifest))
    batch, length = input_shape
    expected = (batch, length, manifest.dim) if rank == 3 else (batch, manifest.dim)
    if tuple(shape) != expected:
        raise InferenceError(
            f"{file}: output {manifest.output!r} is {tuple(shape)} for a batch of {batch} x {length} tokens; "
            f"expected {expected} (the manifest's dim is {manifest.dim})"
        )
