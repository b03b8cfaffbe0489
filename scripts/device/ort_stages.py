"""Phase `ort`: the torch-free runtime on the execution provider under test (CUDA; CPU in the dry run).

Parity is judged against the PyTorch fp32 outputs the prep phase saved (torch/reference.npz): token-level
on full rows at each probe length and on a padded batch, and embedding-level on the parity probe texts
with the parity room's figures and gates. Speed is measured two ways per variant and shape:
  run    OnnxModel.run, the runtime's own path (numpy in, I/O binding, the whole last_hidden_state back)
  bound  inputs already on the device and the output left there: the engine alone, as PyTorch is timed.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from checkkit import CUDA_FP32_ATOL, Failed, Run, Skip, python_env

CUDA = "CUDAExecutionProvider"

# Child programs print one OUTCOME line: "works ..." or the typed error the runtime raised.
WITHOUT_PRELOAD = """
import sys
from gte_onnx import Embedder
from gte_onnx.errors import GteOnnxError
try:
    e = Embedder(sys.argv[1], variant="fp32", providers=["cuda"])
    print("OUTCOME works:", e.provider)
except GteOnnxError as exc:
    print(f"OUTCOME {type(exc).__name__}: {exc}")
"""

GPU_WITHOUT_GPU_WHEEL = """
from gte_onnx.errors import GteOnnxError
from gte_onnx.session import resolve_providers
try:
    print("OUTCOME works:", resolve_providers(["cuda"]))
except GteOnnxError as exc:
    print(f"OUTCOME {type(exc).__name__}: {exc}")
"""


def _ort():
    import onnxruntime

    return onnxruntime


def ort_info(run: Run) -> dict:
    ort = _ort()
    info = {"version": ort.__version__, "providers": ort.get_available_providers(), "file": ort.__file__}
    if run.settings.provider not in info["providers"]:
        raise RuntimeError(f"{run.settings.provider} is not offered by onnxruntime {ort.__version__}: {info['providers']}")
    return info, f"onnxruntime {info['version']}: {info['providers']}"


def provider_errors(run: Run) -> dict:
    """The actionable errors, seen for real: on the device, does the torch-free runtime find the CUDA
    libraries by itself (no torch import, no preload)? In the dry run: CUDA asked of a CPU-only wheel."""
    s = run.settings
    if s.dry_run:
        code, args = GPU_WITHOUT_GPU_WHEEL, []
    else:
        if not (s.model_dir / "gte-onnx.json").is_file():
            raise Skip("needs the exported model folder")
        code, args = WITHOUT_PRELOAD, [str(s.model_dir)]
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=180,
                          env=python_env(s))
    lines = (done.stdout + done.stderr).strip().splitlines()
    outcome = next((line[len("OUTCOME "):] for line in reversed(lines) if line.startswith("OUTCOME ")), None)
    if outcome is None:  # neither worked nor raised a typed error: a deep traceback is a bug to report
        raise RuntimeError("no typed outcome; output ends: " + " | ".join(lines[-6:]))
    if s.dry_run and not (outcome.startswith("ProviderError:") and "needs onnxruntime-gpu" in outcome):
        raise RuntimeError(f"expected the 'CUDA needs onnxruntime-gpu' ProviderError, got: {outcome}")
    key = "cpu_wheel_asked_for_cuda" if s.dry_run else "cuda_without_torch_or_preload"
    if not outcome.startswith(("works:", "ProviderError:")):
        raise Failed(f"a CUDA problem must raise ProviderError, got {outcome[:300]}", {key: outcome})
    return {key: outcome}, outcome[:200]


def preload_cuda(run: Run) -> dict:
    """onnxruntime.preload_dlls(): load the CUDA/cuDNN libraries from the nvidia-* pip packages, as a
    torch-free user of onnxruntime-gpu must (torch does this as a side effect of its import)."""
    if run.settings.dry_run:
        raise Skip("dry run: no CUDA libraries to load")
    ort = _ort()
    if not hasattr(ort, "preload_dlls"):
        raise Skip(f"onnxruntime {ort.__version__} has no preload_dlls")
    ort.preload_dlls()
    return {"preloaded": True}, "preload_dlls() done"


def _variants(run: Run) -> list[str]:
    from gte_onnx.manifest import Manifest

    manifest = Manifest.load(run.settings.model_dir)
    return ["fp32"] + [v for v in run.settings.variants if v in manifest.variants]


def sessions(run: Run) -> dict:
    """One Embedder per variant on the provider under test; its OnnxModel serves the token checks and the
    timings too, so each variant costs one session."""
    import time

    from gte_onnx import Embedder

    if not (run.settings.model_dir / "gte-onnx.json").is_file():
        raise Skip("needs the exported model folder")
    info, failed = {}, {}
    for name in _variants(run):
        start = time.perf_counter()
        try:
            embedder = Embedder(run.settings.model_dir, variant=name, providers=[run.settings.provider])
        except Exception as exc:  # one variant failing to load must not stop the others
            failed[name] = f"{type(exc).__name__}: {exc}"[:500]
            continue
        run.objects[name] = embedder
        onnx = embedder.onnx_model  # the session the runtime itself uses
        info[name] = {"seconds": round(time.perf_counter() - start, 2), "active": onnx.session.get_providers()}
    if not info:
        raise RuntimeError(f"no variant could be loaded: {failed}")
    return {"loaded": info, "failed": failed}, f"loaded {sorted(info)}" + (f", failed {sorted(failed)}" if failed else "")


def _reference(run: Run) -> np.lib.npyio.NpzFile:
    path = run.settings.torch_dir / "reference.npz"
    if not path.is_file():
        raise Skip("needs the PyTorch reference (prep phase)")
    return np.load(path)


def _token_diff(ref: np.ndarray, got: np.ndarray, mask: np.ndarray) -> dict:
    keep = mask.astype(bool)
    r, g = ref[keep].astype(np.float64), got[keep].astype(np.float64)
    finite = bool(np.isfinite(g).all())
    diff = float(np.abs(r - g).max()) if finite else float("inf")
    return {"max_abs_diff": diff, "relative_error": diff / max(float(r.std()), 1e-12), "finite": finite}


def _tf32_diagnosis(run: Run, ref, worst_case: str) -> dict:
    """The fp32 gate failed on CUDA: rerun the worst case with TF32 matmuls off, to tell TF32 rounding
    from a wrong graph."""
    ort = _ort()
    embedder = run.objects["fp32"]
    path = embedder.folder / embedder.onnx_model.variant.file
    session = ort.InferenceSession(str(path), providers=[(CUDA, {"use_tf32": "0"}), "CPUExecutionProvider"])
    ids, mask = ref[f"{worst_case}.ids"], ref[f"{worst_case}.mask"]
    feed = {k: v for k, v in {"input_ids": ids, "attention_mask": mask}.items()
            if k in [i.name for i in session.get_inputs()]}
    got = session.run([embedder.manifest.output], feed)[0]
    return {"case": worst_case, **_token_diff(ref[f"{worst_case}.ref"], got, mask)}


def parity_tokens(run: Run) -> dict:
    ref = _reference(run)
    if not run.objects:
        raise Skip("needs loaded sessions")
    cases = sorted({key.rsplit(".", 1)[0] for key in ref.files if key.endswith(".ids")})
    out: dict = {}
    for name, embedder in run.objects.items():
        onnx = embedder.onnx_model
        per_case = {}
        for case in cases:
            ids, mask = ref[f"{case}.ids"], ref[f"{case}.mask"]
            per_case[case] = _token_diff(ref[f"{case}.ref"], onnx.run(onnx.feed(ids, mask)), mask)
        worst = max(per_case, key=lambda c: per_case[c]["max_abs_diff"])
        out[name] = {"cases": per_case, "worst_case": worst, "max_abs_diff": per_case[worst]["max_abs_diff"],
                     "relative_error": max(c["relative_error"] for c in per_case.values()),
                     "all_finite": all(c["finite"] for c in per_case.values()),
                     f"finite_at_{run.settings.long_length}": per_case[f"len{run.settings.long_length}"]["finite"]}
    fp32 = out.get("fp32")
    atol = CUDA_FP32_ATOL if run.settings.provider == CUDA else 1e-4
    if fp32 is not None:
        fp32["atol"] = atol
        fp32["passed"] = fp32["max_abs_diff"] <= atol
        if not fp32["passed"] and run.settings.provider == CUDA:
            try:
                fp32["without_tf32"] = _tf32_diagnosis(run, ref, fp32["worst_case"])
            except Exception as exc:
                fp32["without_tf32"] = {"error": f"{type(exc).__name__}: {exc}"}
    note = ", ".join(f"{n} max|diff| {r['max_abs_diff']:.2e} (rel {r['relative_error']:.1e})"
                     f"{'' if r['all_finite'] else ' NON-FINITE'}" for n, r in out.items())
    bad = [n for n, r in out.items() if not r["all_finite"]]
    if fp32 is not None and not fp32["passed"]:
        bad.append(f"fp32 over {atol:g}")
    if bad:
        raise Failed(f"token parity failed for {bad}: {note}", out)
    return out, note


def parity_embeddings(run: Run) -> dict:
    """Embeddings of the parity probe texts through Embedder.encode vs PyTorch fp32, judged by the parity
    room's gates (fp32 at 1e-3 on CUDA; fp16/q4f16 by their scale-free figures)."""
    from gte_onnx.parity.gates import check_gate, gate_kind
    from gte_onnx.parity.probes import CARD_TEXTS
    from gte_onnx.parity.report import embedding_figures

    ref = _reference(run)
    if not run.objects:
        raise Skip("needs loaded sessions")
    texts = json.loads((run.settings.torch_dir / "texts.json").read_text())
    reference = ref["texts.ref"]
    card = [i for i, t in enumerate(texts) if t in CARD_TEXTS]
    out, failed = {}, []
    for name, embedder in run.objects.items():
        got = np.asarray(embedder.encode(texts, normalize=False, batch_size=16))
        figures = embedding_figures(reference, got)
        figures["card_max_abs_diff"] = float(np.abs(reference[card] - got[card]).max()) if card else None
        overrides = {"max_abs_diff": CUDA_FP32_ATOL} if name == "fp32" and run.settings.provider == CUDA else None
        gate = check_gate(gate_kind(name), figures, overrides)
        out[name] = {"figures": figures, "gate": gate.to_json()}
        if not gate.passed:
            failed.append(f"{name}: {'; '.join(gate.failures)}")
    note = ", ".join(f"{n} centred cos min {r['figures']['centred_cosine_min']:.5f} "
                     f"{'pass' if r['gate']['passed'] else 'FAIL'}" for n, r in out.items())
    if failed:
        raise Failed("; ".join(failed), out)
    return out, note


def _bound_runner(onnx, feed: dict, device: str):
    """run_with_iobinding with inputs copied to the device once and the output kept there."""
    ort = _ort()
    session = onnx.session
    binding = session.io_binding()
    for name, array in feed.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), device, 0))
    binding.bind_output(onnx.output_name, device, 0)

    def once():
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()

    return once


def ort_bench(run: Run) -> dict:
    from gte_onnx.bench.shapes import TokenSource, parse_shape
    from prep_stages import time_cell

    s = run.settings
    if not run.objects:
        raise Skip("needs loaded sessions")
    source = TokenSource.from_tokenizer_file(s.model_dir / "tokenizer.json")
    device = "cuda" if s.provider == CUDA else "cpu"
    cells: dict[str, dict] = {}
    for name, embedder in run.objects.items():
        onnx = embedder.onnx_model
        for mode in ("run", "bound"):
            row = cells[f"ort {name} {mode}"] = {}
            for label in s.shapes:
                ids = source.synthetic_ids(parse_shape(label), seed=0)  # the same ids as the PyTorch rows
                feed = onnx.feed(ids, np.ones_like(ids))
                try:
                    fn = (lambda onnx=onnx, feed=feed: onnx.run(feed)) if mode == "run" else _bound_runner(onnx, feed, device)
                    row[label] = time_cell(fn, s)
                except Exception as exc:  # one cell failing (out of memory, say) must not lose the rest
                    row[label] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
                run.log(f"  ort {name} {mode} {label}: {row[label].get('median_ms', row[label].get('error'))}")
    return {"cells": cells, "provider": s.provider}, f"{len(cells)} rows x {len(s.shapes)} shapes"


def run_ort(run: Run) -> None:
    run.stage("ort_info", ort_info)
    run.stage("provider_errors", provider_errors)
    run.stage("preload_cuda", preload_cuda)
    run.stage("sessions", sessions)
    run.stage("parity_tokens", parity_tokens)
    run.stage("parity_embeddings", parity_embeddings)
    run.stage("ort_bench", ort_bench)
