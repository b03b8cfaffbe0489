"""Phase `prep`: everything that needs PyTorch but not onnxruntime-gpu, cached in the state folder.

It runs in the first device call (while later calls still carry the wheel's parts), so the last call
finds the model folder, its fp16/q4f16 variants and the PyTorch reference and timings ready.
"""

from __future__ import annotations

import importlib.util
import json
import platform
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
from checkkit import CUDA_FP32_ATOL, Run, Skip

TORCH_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
# A padded batch of mixed lengths: what a real batch looks like (pad rows, masked keys).
BATCH_LENGTHS = (5, 129, 64, 300, 17)


# ---- environment ------------------------------------------------------------------------------------
def environment(run: Run) -> dict:
    info: dict = {"python": platform.python_version(), "machine": platform.machine()}
    for dist in ("torch", "transformers", "onnx", "onnxruntime", "onnxruntime-gpu", "tokenizers", "numpy"):
        try:
            import importlib.metadata as md

            info[dist] = md.version(dist)
        except Exception:
            info[dist] = None
    try:
        import torch

        info["torch_cuda"] = torch.version.cuda
        info["cuda_available"] = bool(torch.cuda.is_available())
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info["gpu"] = props.name
            info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
            info["sm"] = f"{props.major}{props.minor}"
    except ImportError:
        info["torch_cuda"] = None
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.sm",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
        info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    if not run.settings.dry_run and not info.get("cuda_available"):
        raise RuntimeError(f"torch sees no CUDA GPU here: {info}")
    return info, ", ".join(f"{k}={v}" for k, v in info.items() if k in ("gpu", "torch", "torch_cuda", "onnxruntime"))


# ---- export -----------------------------------------------------------------------------------------
def _manifest(folder: Path):
    from gte_onnx.manifest import Manifest

    return Manifest.load(folder)


def _export_matches(run: Run) -> bool:
    folder = run.settings.model_dir
    if not (folder / "gte-onnx.json").is_file() or not (run.settings.checkpoint_dir / "config.json").is_file():
        return False
    source = _manifest(folder).source
    return source.get("model_id") == run.settings.model and dict(source.get("config_overrides") or {}) == dict(
        run.settings.config_overrides or {}
    )


def export(run: Run) -> dict:
    """`gte-onnx export MODEL OUT --random-weights --save-checkpoint CKPT`: the checkpoint is the PyTorch
    reference later, so parity compares against the very weights that were exported."""
    s = run.settings
    cached = _export_matches(run)
    attention = None
    if not cached:
        from gte_onnx.export.cli import main as export_main

        args = [s.model, str(s.model_dir), "--random-weights", "--seed", "0",
                "--save-checkpoint", str(s.checkpoint_dir), "--validate-lengths", s.validate_lengths]
        if s.config_overrides:
            args += ["--config-overrides", json.dumps(s.config_overrides)]
        if importlib.util.find_spec("gte_onnx.export.modernbert") is None:
            # The windowed-attention exporter has not landed: the naive graph still answers every question here.
            args += ["--attention", "naive"]
            attention = "naive (export/modernbert.py absent)"
        for path in (s.model_dir, s.checkpoint_dir):
            shutil.rmtree(path, ignore_errors=True)
        rc = export_main(args)
        if rc:
            raise RuntimeError(f"gte-onnx export exited with {rc}")
    manifest = _manifest(s.model_dir)
    fp32 = manifest.variant("fp32")
    info = {
        "cached": cached,
        "attention": attention or fp32.recipe.get("attention"),
        "fp32_mb": round(fp32.bytes / 1e6, 1),
        "cpu_validation_max_abs_diff": manifest.validation.get("max_abs_diff"),
        "hidden_size": manifest.dim,
        "max_length": manifest.max_length,
    }
    return info, f"fp32 {info['fp32_mb']} MB, attention {info['attention']}, CPU validation {info['cpu_validation_max_abs_diff']}"


# ---- variants ---------------------------------------------------------------------------------------
def make_variant(name: str):
    """`gte-onnx quantize MODEL --variants NAME --eval none`: the CPU fidelity run is skipped (it would
    cost device minutes); this check measures the variant's fidelity on the GPU instead."""

    def stage(run: Run) -> dict:
        folder = run.settings.model_dir
        if not (folder / "gte-onnx.json").is_file():
            raise Skip("needs the exported model folder")
        manifest = _manifest(folder)
        if name in manifest.variants and (folder / manifest.variants[name].file).is_file():
            return {"cached": True, "mb": round(manifest.variants[name].bytes / 1e6, 1)}, "already in the folder"
        try:
            from gte_onnx.quantize.cli import main as quantize_main
        except ImportError as exc:
            raise RuntimeError(f"the quantize verb is missing ({exc}): no {name} variant to check") from None
        try:
            rc = quantize_main([str(folder), "--variants", name, "--eval", "none"])
        except SystemExit as exc:  # argparse rejected the options: the verb changed its interface
            rc = exc.code
        manifest = _manifest(folder)
        if name not in manifest.variants:
            raise RuntimeError(f"gte-onnx quantize --variants {name} exited {rc} without recording {name}")
        variant = manifest.variant(name)
        info = {"file": variant.file, "mb": round(variant.bytes / 1e6, 1), "quantize_exit": rc,
                "providers": list(variant.providers)}
        return info, f"{variant.file}, {info['mb']} MB (gte-onnx quantize exit {rc})"

    return stage


# ---- PyTorch reference ------------------------------------------------------------------------------
def _torch_model(run: Run, dtype: str):
    """The exported checkpoint in PyTorch, cast to dtype; the fp32 model is loaded once per process."""
    import copy

    import torch
    from gte_onnx.export.checkpoint import load_checkpoint

    torch.backends.cuda.matmul.allow_tf32 = False  # a true fp32 reference
    torch.backends.cudnn.allow_tf32 = False
    base = run.objects.get("torch_fp32")
    if base is None:
        base = load_checkpoint(str(run.settings.checkpoint_dir)).model.to(run.settings.device).eval()
        run.objects["torch_fp32"] = base
    if dtype == "fp32":
        return base
    return copy.deepcopy(base).to(dtype=getattr(torch, TORCH_DTYPES[dtype])).eval()


def token_probes(folder: Path, lengths, long_length: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """case -> (input_ids, attention_mask): one full row per length, and one padded batch."""
    from gte_onnx.bench.shapes import Shape, TokenSource

    source = TokenSource.from_tokenizer_file(folder / "tokenizer.json")
    probes = {}
    for n, length in enumerate(sorted(set(lengths) | {long_length})):
        ids = source.synthetic_ids(Shape(1, length), seed=1000 + n)
        probes[f"len{length}"] = (ids, np.ones_like(ids))
    rows = [source.synthetic_ids(Shape(1, length), seed=2000 + i)[0] for i, length in enumerate(BATCH_LENGTHS)]
    pad = int(_manifest(folder).tokenizer.get("pad_token_id") or 0)
    from gte_onnx.batching import pad_batch

    probes["padded_batch"] = pad_batch(rows, pad)
    return probes


def probe_texts(folder: Path) -> list[str]:
    """The parity room's probe set: card texts, short/code/non-English, CISI, window edges, one long text."""
    from gte_onnx.parity.probes import build_probe_set

    return build_probe_set(folder / "tokenizer.json", _manifest(folder).max_length, "embedding").texts


def _torch_embed(model, folder: Path, texts: list[str], device: str) -> np.ndarray:
    """CLS embeddings (raw, unnormalised) with the runtime's own tokenizer and batching."""
    import torch
    from gte_onnx.batching import pad_batch, plan_batches
    from gte_onnx.pooling import pool
    from gte_onnx.tokenize import TextTokenizer

    manifest = _manifest(folder)
    tok = TextTokenizer.from_folder(folder, manifest.max_length, manifest.tokenizer.get("pad_token_id"))
    encoded = tok.encode(texts, "end")
    out = np.empty((len(texts), manifest.dim), dtype=np.float32)
    with torch.inference_mode():
        for rows in plan_batches(encoded.lengths, 16, 16384):
            ids, mask = pad_batch([encoded.ids[i] for i in rows], tok.pad_token_id)
            hidden = model(input_ids=torch.from_numpy(ids).to(device),
                           attention_mask=torch.from_numpy(mask).to(device))[0]
            out[rows] = pool(manifest.pooling, hidden.float().cpu().numpy(), mask)
    return out


def torch_reference(run: Run) -> dict:
    """PyTorch fp32 outputs for the token probes and the probe texts (saved to torch/reference.npz), and
    how far PyTorch's own fp16/bf16 land from them: the yardstick for ORT's fp16."""
    import torch

    s = run.settings
    if not _export_matches(run):
        raise Skip("needs the exported model and its checkpoint")
    fp32_sha = _manifest(s.model_dir).variant("fp32").sha256
    meta_path = s.torch_dir / "reference.json"
    if meta_path.is_file() and json.loads(meta_path.read_text()).get("fp32_sha256") == fp32_sha:
        return {"cached": True, **json.loads(meta_path.read_text())}, "reference already computed"
    s.torch_dir.mkdir(parents=True, exist_ok=True)
    from gte_onnx.parity.report import embedding_figures

    texts = probe_texts(s.model_dir)
    probes = token_probes(s.model_dir, s.token_lengths, s.long_length)
    arrays: dict[str, np.ndarray] = {}
    model = _torch_model(run, "fp32")
    with torch.inference_mode():
        for case, (ids, mask) in probes.items():
            hidden = model(input_ids=torch.from_numpy(ids).to(s.device), attention_mask=torch.from_numpy(mask).to(s.device))[0]
            arrays[f"{case}.ids"], arrays[f"{case}.mask"] = ids, mask
            arrays[f"{case}.ref"] = hidden.float().cpu().numpy()
    reference = _torch_embed(model, s.model_dir, texts, s.device)
    arrays["texts.ref"] = reference
    low: dict[str, dict] = {}
    for dtype in [d for d in s.torch_dtypes if d != "fp32"]:
        try:
            got = _torch_embed(_torch_model(run, dtype), s.model_dir, texts, s.device)
            figures = embedding_figures(reference, got)
            low[dtype] = {k: figures[k] for k in ("centred_cosine_min", "centred_cosine_mean", "cosine_min",
                                                    "relative_error", "topk_overlap") if k in figures}
        except Exception as exc:  # one dtype failing (e.g. fp16 on an old CPU) must not lose the reference
            low[dtype] = {"error": f"{type(exc).__name__}: {exc}"}
        if s.device == "cuda":
            torch.cuda.empty_cache()
    np.savez(s.torch_dir / "reference.npz", **arrays)
    (s.torch_dir / "texts.json").write_text(json.dumps(texts))
    meta = {"fp32_sha256": fp32_sha, "texts": len(texts), "token_cases": sorted(probes),
            "device": s.device, "torch_low_precision_vs_fp32": low, "fp32_atol_on_cuda": CUDA_FP32_ATOL}
    meta_path.write_text(json.dumps(meta, indent=2))
    return meta, f"{len(texts)} texts, token cases {sorted(probes)}"


# ---- PyTorch speed ----------------------------------------------------------------------------------
def time_cell(fn, settings, sync=lambda: None) -> dict:
    """Warm-ups, then timed repeats until max_repeats or the cell's budget (at least min_repeats)."""
    from gte_onnx.bench.measure import summarize

    for _ in range(settings.warmups):
        fn()
    sync()
    samples: list[float] = []
    while len(samples) < settings.max_repeats:
        start = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - start)
        if len(samples) >= settings.min_repeats and sum(samples) > settings.cell_budget_s:
            break
    stats = summarize(samples)
    return {"median_ms": stats.median * 1e3, "min_ms": stats.min * 1e3, "iqr_ms": stats.iqr * 1e3, "n": stats.n}


def torch_bench(run: Run) -> dict:
    """PyTorch (sdpa attention) on the same token ids as the ORT rows: model cast to fp32/fp16/bf16,
    inputs already on the device, output left there (forward pass only)."""
    import torch
    from gte_onnx.bench.shapes import TokenSource, parse_shape

    s = run.settings
    if not _export_matches(run):
        raise Skip("needs the exported model and its checkpoint")
    fp32_sha = _manifest(s.model_dir).variant("fp32").sha256
    cache = s.torch_dir / "bench.json"
    key = {"fp32_sha256": fp32_sha, "shapes": list(s.shapes), "dtypes": list(s.torch_dtypes)}
    if cache.is_file():
        saved = json.loads(cache.read_text())
        if saved.get("key") == key:
            return {"cached": True, **saved}, "timings already measured"
    source = TokenSource.from_tokenizer_file(s.model_dir / "tokenizer.json")
    sync = torch.cuda.synchronize if s.device == "cuda" else (lambda: None)
    cells: dict[str, dict[str, dict]] = {}
    for dtype in s.torch_dtypes:
        row = cells[f"torch {dtype}"] = {}
        try:
            model = _torch_model(run, dtype)
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {exc}"
            continue
        for label in s.shapes:
            ids = torch.from_numpy(source.synthetic_ids(parse_shape(label), seed=0)).to(s.device)
            mask = torch.ones_like(ids)

            def forward(model=model, ids=ids, mask=mask):
                with torch.inference_mode():
                    return model(input_ids=ids, attention_mask=mask)[0]

            try:
                row[label] = time_cell(forward, s, sync)
            except Exception as exc:  # one cell (e.g. out of memory) must not lose the others
                row[label] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            run.log(f"  torch {dtype} {label}: {row[label].get('median_ms', row[label].get('error'))}")
        del model  # the fp32 base stays cached in run.objects; a cast copy is freed here
        if s.device == "cuda":
            torch.cuda.empty_cache()
    s.torch_dir.mkdir(parents=True, exist_ok=True)
    result = {"key": key, "cells": cells, "device": s.device}
    cache.write_text(json.dumps(result, indent=2))
    return result, f"{len(cells)} dtypes x {len(s.shapes)} shapes"


def run_prep(run: Run) -> None:
    # fp16 is the variant; q4f16 ("if it pays") is made last, so a deadline costs only it.
    run.stage("environment", environment)
    run.stage("export", export)
    first = [v for v in run.settings.variants if v == "fp16"]
    for name in first:
        run.stage(f"variant_{name}", make_variant(name))
    run.stage("torch_reference", torch_reference)
    run.stage("torch_bench", torch_bench)
    for name in [v for v in run.settings.variants if v not in first]:
        run.stage(f"variant_{name}", make_variant(name))
