"""Data-set fidelity of our variants and of every bench peer (every quantized form), measured the same way.

    python dev/peer_data_fidelity.py MINILM_CHECKPOINT ONNX_DIR [--peers LIST] [--peers-cache DIR]
                                     [--threads N] [--batch-size N] [--no-torch-data] [--ours LIST]
                                     [--json OUT]

MINILM_CHECKPOINT is the sentence-transformers folder the ONNX_DIR was exported from (ONNX_DIR holds
model.onnx and model_int8.onnx, and model_q4.onnx when quantized so: `gte-onnx export CKPT DIR &&
gte-onnx quantize DIR --variants int8,q4`).

Rows:
  pytorch          sentence-transformers on the checkpoint (the probe reference; its data scores unless
                   --no-torch-data)
  ours-fp32/-int8/-q4  the folder's variants through gte_onnx.Embedder.encode: exactly what
                   `gte-onnx quantize --eval full` scores (--ours fp32 scores only fp32, the reference of
                   every drop, e.g. to add a few peer rows: `--no-torch-data --ours fp32 --peers
                   llamacpp-q8_0,llamacpp-q4_k_m`)
  --peers (bench's names and families, default optimum-int8,openvino,hub,llamacpp):
  optimum-int8     the plain ONNX export's dynamic int8 (sentence-transformers' ONNX backend recipe)
  openvino         bench's OpenVINO peer (openvino.convert_model, the CPU plugin's default inference
                   precision: bf16 on CPUs with avx512_bf16 / AMX)
  openvino-int8    bench's NNCF static int8 peer (transformer preset, 300 STS-B calibration sentences), as
                   sentence-transformers' export_static_quantized_openvino_model makes it
  hub-*            the transformers.js files (fp16, int8, uint8, quantized, q4, q4f16, bnb4), `gte-onnx
                   import`ed and run through gte_onnx.Embedder.encode (bench/hub_peer.py)
  llamacpp-*       GGUF f16 / q8_0 / q4_k_m through llama-cpp-python, llama.cpp's own mean/CLS pooling
                   over our token ids (bench/llamacpp_peer.py)
A peer that fails to build or run is a row with its error, not the end of the run.

The peers are built by bench.peer_backends.PeerBuilder into the same cache `gte-onnx bench --peers
openvino --torch CKPT --peers-cache DIR` uses (so either reuses the other's build), and run by its
PeerBackend. Every row is scored by the same code: parity.figures.data_figures (STS-B test Spearman,
CISI nDCG@10 / MRR@10, x100) and data_drops (fp32 minus variant, points), and the probe-set figures by
parity.figures.embedding_figures against PyTorch (and against our fp32, the quantize step's reference).
Peers get our tokenizer's ids (same truncation at the manifest's max_length), in length-sorted padded
batches with the attention mask, pooled the way the manifest says (pooling.pool) and L2-normalised; the
"pad" column is the largest difference between a peer's padded-batch and one-at-a-time probe vectors,
so a peer that ignored the mask would show.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA_SETS = ("sts-b", "cisi")
DEFAULT_PEERS = "optimum-int8,openvino,hub,llamacpp"
OURS = ("fp32", "int8", "q4")
# A quantized peer's "own" fp32: the same engine's unquantized form.
OWN_REFERENCE = {"openvino-int8": "openvino", "optimum-int8": "optimum-fp32", "llamacpp-q8_0": "llamacpp-f16",
                 "llamacpp-q4_k_m": "llamacpp-f16"}


class PeerEmbedder:
    """A bench peer behind an `encode(texts, normalize)` like Embedder's: our tokenizer, padded batches
    with the mask, the manifest's pooling."""

    def __init__(self, backend, folder: Path, batch_size: int):
        from gte_onnx.folder.manifest import Manifest
        from gte_onnx.inference.tokenize import TextTokenizer

        self.backend = backend
        self.manifest = Manifest.load(folder)
        self.pad = int(self.manifest.tokenizer.get("pad_token_id") or 0)
        self.tokenizer = TextTokenizer.from_folder(folder, self.manifest.max_length, self.pad)
        self.batch_size = batch_size

    def _pooled(self, rows: list[np.ndarray]) -> np.ndarray:
        from gte_onnx.inference.pooling import pool

        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), self.pad, dtype=np.int64)
        mask = np.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, : len(r)], mask[i, : len(r)] = r, 1
        if getattr(self.backend, "pooled_natively", False):  # llama.cpp pools itself
            return np.asarray(self.backend.pooled(ids, mask), dtype=np.float32)
        return pool(self.manifest.pooling, self.backend.hidden(ids, mask), mask).astype(np.float32)

    def encode(self, texts: list[str], normalize: bool = True, batch_size: int | None = None) -> np.ndarray:
        from gte_onnx.inference.pooling import l2_normalize

        rows = self.tokenizer.encode(list(texts), "end").ids
        size = batch_size or self.batch_size
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        out = np.zeros((len(rows), self.manifest.dim), dtype=np.float32)
        for start in range(0, len(order), size):
            chunk = order[start : start + size]
            out[chunk] = self._pooled([rows[i] for i in chunk])
        return l2_normalize(out) if normalize else out


def build_peers(checkpoint: str, folder: Path, peers: list[str], peers_cache: str | None, log) -> tuple[Path, dict]:
    from gte_onnx.bench.peer_backends import CALIBRATION_TEXTS, PeerBuilder
    from gte_onnx.bench.peers import cache_folder, peer_versions
    from gte_onnx.bench.torch_baseline import resolve_torch_spec
    from gte_onnx.folder.manifest import Manifest

    torch_spec = resolve_torch_spec(checkpoint, Manifest.load(folder))
    # The key bench's plan_peers makes with its default --peers-calibration (300).
    cache = cache_folder(peers_cache, {**torch_spec, "calibration_texts": CALIBRATION_TEXTS}, peer_versions())
    log(f"peers cache {cache}")
    built = PeerBuilder({"cache": str(cache), "folder": str(folder), "peers": list(peers), "torch": torch_spec,
                         "calibration_texts": CALIBRATION_TEXTS}).load()["built"]
    for name, record in built.items():
        log(f"  {name}: " + (f"FAILED: {record['error']}" if record.get("error") else "cached" if record.get("cached")
                             else f"built in {record['build_s']:.1f} s"))
    return cache, built


def peer_encoder(name: str, cache: Path, folder: Path, args) -> tuple[object, str]:
    """(encode(texts, normalize), engine description) of one built peer."""
    from gte_onnx.bench.peers import PEER_ENGINE

    engine = PEER_ENGINE[name]
    if engine == "gte-onnx":  # a transformers.js file, imported: our Embedder, as its user runs it
        import gte_onnx
        from gte_onnx.bench.hub_peer import HUB_MODES, MODEL_DIR, VARIANT

        variant = VARIANT[HUB_MODES[name]]
        model = gte_onnx.Embedder(cache / name / MODEL_DIR, variant=variant, providers=["CPUExecutionProvider"],
                                  threads=args.threads)

        def encode(texts, normalize, batch_size=None):
            return model.encode(list(texts), batch_size=batch_size or args.batch_size, normalize=normalize,
                                show_progress=False)

        return encode, f"onnxruntime (gte-onnx import) {model.manifest.variants[variant].file}"
    if engine == "llama.cpp":
        from gte_onnx.bench.llamacpp_peer import LlamaCppBackend

        backend = LlamaCppBackend({"peer": name, "cache": str(cache), "threads": args.threads, "folder": str(folder),
                                   "n_ctx": 512})
        info = backend.load()
        return PeerEmbedder(backend, folder, args.batch_size).encode, (
            f"llama-cpp-python {info['llama_cpp_python']}, {info['pooling']} pooling")
    from gte_onnx.bench.peer_backends import PeerBackend

    backend = PeerBackend({"peer": name, "cache": str(cache), "threads": args.threads})
    info = backend.load()
    desc = (f"openvino {info['openvino']}, {info['inference_precision']}" if info["engine"] == "openvino"
            else f"onnxruntime {info['onnxruntime']}")
    return PeerEmbedder(backend, folder, args.batch_size).encode, desc


def score(name: str, encode, reference, fp32_probe, log) -> dict:
    """Probe figures (vs PyTorch and vs our fp32) and data scores of one row, all by parity's code."""
    from gte_onnx.parity.figures import data_figures, embedding_figures
    from gte_onnx.inference.tokenize import TruncationWarning

    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncationWarning)  # CISI abstracts longer than 256 are cut, as fp32's
        probe = np.asarray(encode(reference.texts, False), dtype=np.float32)
        data = data_figures(lambda texts: encode(texts, True), DATA_SETS)
    row = {
        "name": name,
        "data": data,
        "probe_vs_pytorch": embedding_figures(reference.outputs, probe),
        "probe_vs_ours_fp32": embedding_figures(fp32_probe, probe) if fp32_probe is not None else None,
        "probe": probe,
        "seconds": time.perf_counter() - started,
    }
    log(f"  {name}: STS-B {data['sts_spearman']:.4f}  CISI nDCG@10 {data['cisi_ndcg@10']:.4f}  "
        f"({row['seconds']:.0f} s)")
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="the sentence-transformers checkpoint folder (all-MiniLM-L6-v2)")
    parser.add_argument("onnx_dir", help="the folder exported from it, with model.onnx and model_int8.onnx")
    parser.add_argument("--peers", default=DEFAULT_PEERS, help=f"bench peers or families (default {DEFAULT_PEERS})")
    parser.add_argument("--peers-cache", default=None, help="bench's peers cache root (default: bench's)")
    parser.add_argument("--threads", type=int, default=2, help="threads for every engine (default 2)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--no-torch-data", action="store_true", help="skip PyTorch's STS-B / CISI scores")
    parser.add_argument("--ours", default=",".join(OURS),
                        help="our variants to score (default fp32,int8,q4; fp32 is always scored: the drops' reference)")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args(argv)

    import torch

    import gte_onnx
    from gte_onnx.bench.peers import parse_peers
    from gte_onnx.parity.figures import data_drops
    from gte_onnx.parity.reference import compute_reference

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    wall = time.perf_counter()
    torch.set_num_threads(args.threads)
    folder = Path(args.onnx_dir)
    peers = parse_peers(args.peers)
    with contextlib.redirect_stdout(sys.stderr):  # NNCF's progress bars: stdout keeps only the table
        cache, built = build_peers(args.checkpoint, folder, peers, args.peers_cache, log)
    reference = compute_reference(args.checkpoint, threads=args.threads, log=log)
    log(f"reference: {reference.provenance['backend']}, {reference.size} probe texts")

    rows: dict[str, dict] = {}
    engines: dict[str, str] = {"pytorch": f"torch {torch.__version__} fp32 ({reference.provenance['backend']})"}
    if not args.no_torch_data:
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(args.checkpoint, device="cpu")

        def torch_encode(texts, normalize):
            if not normalize:  # the probe figures use the reference's own raw vectors
                return reference.outputs
            return st.encode(list(texts), batch_size=args.batch_size, normalize_embeddings=True,
                             convert_to_numpy=True, show_progress_bar=False)

        rows["pytorch"] = score("pytorch", torch_encode, reference, None, log)
        del st

    fp32_probe = None
    from gte_onnx.folder.manifest import Manifest

    present = Manifest.load(folder).variants
    wanted = {"fp32", *(v.strip() for v in args.ours.split(","))}
    for variant in [v for v in OURS if v in present and v in wanted]:
        model = gte_onnx.Embedder(folder, variant=variant, providers=["CPUExecutionProvider"], threads=args.threads)
        engines[f"ours-{variant}"] = f"onnxruntime {model.manifest.variants[variant].file}"

        def ours_encode(texts, normalize, model=model):
            return model.encode(list(texts), batch_size=args.batch_size, normalize=normalize, show_progress=False)

        row = score(f"ours-{variant}", ours_encode, reference, fp32_probe, log)
        if variant == "fp32":
            fp32_probe = row["probe"]
            row["probe_vs_ours_fp32"] = None
        rows[f"ours-{variant}"] = row
        del model

    failed: dict[str, str] = {}
    for name in peers:
        if built.get(name, {}).get("error"):
            failed[name] = "build: " + built[name]["error"]
            continue
        try:
            encode, engines[name] = peer_encoder(name, cache, folder, args)
            row = score(name, encode, reference, fp32_probe, log)
            # The mask is honoured: one-at-a-time (no padding) probe vectors equal the padded-batch ones.
            alone = encode(reference.texts, False, batch_size=1)
            row["pad_max_abs_diff"] = float(np.max(np.abs(alone - row["probe"])))
            row["pad_nonfinite_rows"] = int(np.sum(~np.all(np.isfinite(row["probe"]), axis=1)))
        except Exception as exc:  # noqa: BLE001 - one peer's engine failing must not stop the others
            failed[name] = f"{type(exc).__name__}: {exc}"
            log(f"  {name}: FAILED {failed[name]}")
            continue
        rows[name] = row
        del encode

    fp32 = rows["ours-fp32"]["data"]
    for name, row in rows.items():
        row["drops_vs_ours_fp32"] = data_drops(row["data"], fp32)
        if "pytorch" in rows:
            row["drops_vs_pytorch"] = data_drops(row["data"], rows["pytorch"]["data"])
        own = "ours-fp32" if name.startswith("ours-") else OWN_REFERENCE.get(name)
        if own in rows and own != name:
            row["drops_vs_own_fp32"] = data_drops(row["data"], rows[own]["data"])
    wall = time.perf_counter() - wall

    print(format_table(rows, engines))
    for name, why in failed.items():
        print(f"{name}: FAILED: {why.splitlines()[0][:300]}")
    print(f"\nprobe set: {reference.size} texts (PyTorch reference: {reference.provenance['backend']}); "
          f"threads {args.threads}; peers cache {cache}; wall {wall:.0f} s")
    if args.json:
        out = {"checkpoint": args.checkpoint, "onnx_dir": str(folder), "peers_cache": str(cache), "wall_s": wall,
               "engines": engines, "built": built, "failed": failed,
               "rows": {n: {k: v for k, v in r.items() if k != "probe"} for n, r in rows.items()}}
        Path(args.json).write_text(json.dumps(out, indent=2, default=str) + "\n", encoding="utf-8")
    return 0


def format_table(rows: dict[str, dict], engines: dict[str, str]) -> str:
    def num(value, fmt):
        return "-" if value is None else format(value, fmt)

    head = (f"{'row':<14} {'STS-B':>8} {'nDCG@10':>8} {'MRR@10':>8} │ {'ΔSTS':>8} {'ΔnDCG':>8} │ "
            f"{'ΔSTS own':>8} {'ΔnDCG own':>9} │ {'ccos PT':>8} {'ccos min':>8} {'ccos f32':>8} {'pad':>8}  engine")
    lines = ["STS-B test Spearman, CISI nDCG@10 / MRR@10, x100; Δ = fp32 minus row, in points: vs ours-fp32, "
             "and 'own' vs the same engine's fp32 / default row",
             "ccos PT / ccos min: probe centred cosine mean / min vs PyTorch; ccos f32: mean vs ours-fp32; "
             "pad: max |padded batch - one at a time| of a peer's raw probe vectors",
             head, "─" * len(head)]
    for name, row in rows.items():
        d, drop = row["data"], row.get("drops_vs_ours_fp32", {})
        own = row.get("drops_vs_own_fp32") or {}
        pt, f32 = row["probe_vs_pytorch"], row.get("probe_vs_ours_fp32") or {}
        lines.append(
            f"{name:<14} {d['sts_spearman']:>8.4f} {d['cisi_ndcg@10']:>8.4f} {d['cisi_mrr@10']:>8.4f} │ "
            f"{drop.get('sts_drop', 0):>8.4f} {drop.get('cisi_ndcg_drop', 0):>8.4f} │ "
            f"{num(own.get('sts_drop'), '8.4f'):>8} {num(own.get('cisi_ndcg_drop'), '9.4f'):>9} │ "
            f"{pt['centred_cosine_mean']:>8.6f} {pt['centred_cosine_min']:>8.6f} "
            f"{num(f32.get('centred_cosine_mean'), '8.6f'):>8} {num(row.get('pad_max_abs_diff'), '8.1e'):>8}  "
            f"{engines.get(name, '')}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
