"""The llama.cpp peers: GGUF files made from the checkpoint by llama.cpp's own converter, run through
llama-cpp-python's embedding path (the `[llamacpp]` extra).

    llamacpp-f16     convert_hf_to_gguf.py --outtype f16 (the converter's default for an fp32 checkpoint
                     is f16 too; every 2-D weight in f16, norms and biases in f32)
    llamacpp-q8_0    llama_model_quantize(f16 file, Q8_0): blocks of 32 int8 weights with one fp16 scale
    llamacpp-q4_k_m  llama_model_quantize(f16 file, Q4_K_M): 4-bit k-quants, some tensors at 6 bits

Run as a user of llama-cpp-python runs an embedding model: `Llama(path, embedding=True, pooling_type=...)`
with the bench's threads, the model folder's pooling (CLS for gte, mean for MiniLM), and `Llama.embed`'s
batching (sequences are packed into one decode of at most n_batch tokens, n_seq_max sequences; llama.cpp
masks across sequences instead of padding). The ids are ours, so every contender sees the same tokens.

The converter is not in the llama-cpp-python wheel: it is in the sdist's vendor/llama.cpp (with its
gguf-py and conversion/ package). `scripts/install-llamacpp.sh` builds the wheel and copies them to
`<venv>/share/gte-onnx/llama.cpp`; LLAMA_CPP_CONVERTER=/path/to/convert_hf_to_gguf.py overrides.

Heavy imports happen inside functions: this module is imported by workers only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import missing_dependency

GGUF_FILE = "model.gguf"
# Peer name -> (llama.cpp file type name, what it is).
LLAMACPP_TYPES = {
    "llamacpp-f16": ("F16", "convert_hf_to_gguf.py --outtype f16"),
    "llamacpp-q8_0": ("Q8_0", "llama_model_quantize(f16 GGUF, Q8_0)"),
    "llamacpp-q4_k_m": ("Q4_K_M", "llama_model_quantize(f16 GGUF, Q4_K_M)"),
}
INSTALL_HINT = ("bash scripts/install-llamacpp.sh  (builds llama-cpp-python 0.3.36 from source with "
                "GGML_NATIVE and installs llama.cpp's converter next to it)")
CONVERTER_ENV = "LLAMA_CPP_CONVERTER"


def import_llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        raise missing_dependency("llama_cpp", "llamacpp", "The llama.cpp peers (--peers llamacpp)") from None
    return llama_cpp


def converter_path() -> Path:
    """llama.cpp's convert_hf_to_gguf.py: $LLAMA_CPP_CONVERTER, else the copy install-llamacpp.sh made."""
    env = os.environ.get(CONVERTER_ENV)
    candidates = [Path(env)] if env else [Path(sys.prefix) / "share" / "gte-onnx" / "llama.cpp" / "convert_hf_to_gguf.py"]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"llama.cpp's convert_hf_to_gguf.py was not found (looked at {[str(p) for p in candidates]}); "
        f"set {CONVERTER_ENV} or run {INSTALL_HINT}"
    )


def hf_folder_for(checkpoint_dir: Path | None, model, folder: Path, work: Path) -> Path:
    """A transformers folder the converter can read: the checkpoint itself when it is a folder, else the
    loaded model saved with our folder's tokenizer files (random-weight specs have no folder)."""
    if checkpoint_dir is not None and (checkpoint_dir / "config.json").is_file():
        return checkpoint_dir
    out = work / "hf"
    model.save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                 "modules.json", "config_sentence_transformers.json", "1_Pooling"):
        src = folder / name
        if src.is_dir():
            shutil.copytree(src, out / name, dirs_exist_ok=True)
        elif src.is_file():
            shutil.copyfile(src, out / name)
    return out


def convert_f16(hf_dir: Path, out_file: Path, log_file: Path) -> None:
    """llama.cpp's converter, in a process of its own (it imports torch and its own gguf-py)."""
    cmd = [sys.executable, str(converter_path()), str(hf_dir), "--outfile", str(out_file), "--outtype", "f16"]
    with open(log_file, "w", encoding="utf-8") as log:
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0 or not out_file.is_file():
        tail = log_file.read_text(encoding="utf-8", errors="replace")[-1500:]
        raise RuntimeError(f"convert_hf_to_gguf.py failed (exit {done.returncode}): {tail}")


def quantize_gguf(src: Path, dst: Path, ftype_name: str, threads: int | None) -> None:
    llama_cpp = import_llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype_name}")
    params.nthread = int(threads or 0)
    code = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if code != 0 or not dst.is_file():
        raise RuntimeError(f"llama_model_quantize({ftype_name}) returned {code}")


def build(name: str, cache: Path, hf_dir: Path, tmp: Path, threads: int | None) -> dict[str, Any]:
    """Build one llama.cpp peer into tmp (the caller moves it into place); the f16 file is the source
    of the quantized ones and is built first, once."""
    ftype, recipe = LLAMACPP_TYPES[name]
    f16 = cache / "llamacpp-f16" / GGUF_FILE
    if name == "llamacpp-f16":
        convert_f16(hf_dir, tmp / GGUF_FILE, tmp / "convert.log")
    else:
        if not f16.is_file():
            raise RuntimeError("the f16 GGUF (llamacpp-f16) was not built; the quantized files start from it")
        quantize_gguf(f16, tmp / GGUF_FILE, ftype, threads)
    import importlib.metadata

    return {"peer": name, "file": GGUF_FILE, "engine": "llama.cpp", "ftype": ftype,
            "recipe": f"{recipe}; llama-cpp-python {importlib.metadata.version('llama_cpp_python')}"}


class LlamaCppBackend:
    """One GGUF file in llama-cpp-python, embeddings pooled by llama.cpp (CLS or mean, the folder's)."""

    pooled_natively = True

    def __init__(self, spec: Mapping[str, Any]):
        self.name = spec["peer"]
        self.dir = Path(spec["cache"]) / self.name
        self.threads = spec.get("threads")
        self.folder = spec.get("folder")
        self.pooling = spec.get("pooling")
        self.n_ctx = int(spec.get("n_ctx") or 8192)
        self.llm = None

    def load(self) -> dict[str, Any]:
        llama_cpp = import_llama_cpp()
        record_file = self.dir / "peer.json"
        if not record_file.is_file():
            raise FileNotFoundError(f"peer {self.name} is not built in {self.dir}")
        record = json.loads(record_file.read_text(encoding="utf-8"))
        pooling = self.pooling
        if pooling is None and self.folder:
            from gte_onnx.folder.manifest import Manifest

            pooling = Manifest.load(self.folder).pooling
        pooling_type = {"cls": llama_cpp.LLAMA_POOLING_TYPE_CLS,
                        "mean": llama_cpp.LLAMA_POOLING_TYPE_MEAN}[pooling or "cls"]
        threads = int(self.threads) if self.threads else None
        self.llm = llama_cpp.Llama(
            str(self.dir / record["file"]), embedding=True, pooling_type=pooling_type,
            n_ctx=self.n_ctx, n_batch=self.n_ctx, n_ubatch=self.n_ctx,
            n_threads=threads, n_threads_batch=threads, verbose=False,
        )
        self.pooling = pooling
        return {"peer": self.name, "recipe": record.get("recipe"), "engine": "llama.cpp",
                "llama_cpp_python": llama_cpp.__version__, "pooling": pooling, "n_ctx": self.n_ctx,
                "n_threads": self.llm.context_params.n_threads}

    def prepare(self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None) -> list[list[int]]:
        """The rows as token lists (a mask cuts each row at its last token: llama.cpp does not pad)."""
        ids = np.asarray(input_ids, dtype=np.int64)
        if attention_mask is None:
            return [list(map(int, row)) for row in ids]
        mask = np.asarray(attention_mask)
        return [list(map(int, row[: int(m.sum())])) for row, m in zip(ids, mask)]

    def embed_rows(self, rows: Sequence[Sequence[int]]) -> np.ndarray:
        """Llama.embed's loop on token ids: sequences packed into one decode while they fit n_batch and
        n_seq_max, then llama_get_embeddings_seq per sequence (unnormalised)."""
        import llama_cpp

        llm = self.llm
        n_embd, n_batch, n_seq_max = llm.n_embd(), llm.n_batch, llm.context_params.n_seq_max
        out: list[np.ndarray] = []
        pending: list[int] = []
        tokens_in_batch = 0

        def decode() -> None:
            llm._ctx.kv_cache_clear()
            llm._ctx.decode(llm._batch)
            llm._batch.reset()
            for i in range(len(pending)):
                ptr = llama_cpp.llama_get_embeddings_seq(llm._ctx.ctx, i)
                out.append(np.ctypeslib.as_array(ptr, shape=(n_embd,)).astype(np.float32))

        llm._batch.reset()
        for row in rows:
            row = list(row)[:n_batch]
            if pending and (tokens_in_batch + len(row) > n_batch or len(pending) >= n_seq_max):
                decode()
                pending, tokens_in_batch = [], 0
            llm._batch.add_sequence(row, len(pending), True)
            pending.append(len(row))
            tokens_in_batch += len(row)
        if pending:
            decode()
        return np.stack(out)

    def run(self, feed: list[list[int]]) -> float:
        start = time.perf_counter()
        self.embed_rows(feed)
        return time.perf_counter() - start

    def pooled(self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
        """(B, H) pooled vectors, llama.cpp's own pooling."""
        return self.embed_rows(self.prepare(input_ids, attention_mask))

    def run_corpus(self, texts: Sequence[str], batch_size: int) -> dict[str, Any]:
        raise RuntimeError("peers are measured on the shapes only")
