"""The peers inside worker processes: building them (PeerBuilder, needs torch) and running them
(PeerBackend: onnxruntime or openvino only). See peers.py for what each peer is and why.

Every heavy import happens inside a function: this module is imported by the worker only.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import missing_dependency
from gte_onnx.defaults import CPU

ONNX_FILE = "model.onnx"
OV_FILE = "openvino_model.xml"
# sentence-transformers' static OpenVINO quantization: 300 calibration texts of up to 384 tokens.
CALIBRATION_TEXTS = 300
CALIBRATION_LENGTH = 384
OPSET = 17


def _import_openvino():
    try:
        import openvino
    except ImportError:
        raise missing_dependency("openvino", "peers", "The OpenVINO peers (--peers openvino)") from None
    return openvino


def peer_dir(cache: str | Path, name: str) -> Path:
    return Path(cache) / name


def is_built(cache: str | Path, name: str) -> bool:
    return (peer_dir(cache, name) / "peer.json").is_file()


def _finish(tmp: Path, final: Path, record: Mapping[str, Any]) -> None:
    """Write the record last and move the folder into place, so a half-built peer is never loaded."""
    (tmp / "peer.json").write_text(json.dumps(dict(record), indent=2) + "\n", encoding="utf-8")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)


def _calibration_texts(n: int) -> list[str]:
    """Real sentences (STS-B dev then test), unique, in file order."""
    from ..parity.datasets import load_sts_b

    texts: list[str] = []
    for split in ("dev", "test"):
        s1, s2, _ = load_sts_b(split)
        for text in (t for pair in zip(s1, s2) for t in pair):
            if text not in texts:
                texts.append(text)
            if len(texts) >= n:
                return texts
    return texts


class PeerBuilder:
    """Builds one family's peers from the checkpoint, once, into the cache (run in its own worker)."""

    def __init__(self, spec: Mapping[str, Any]):
        self.spec = dict(spec)
        self.cache = Path(spec["cache"])
        self.folder = Path(spec["folder"])  # our model folder: its tokenizer for the calibration texts

    def load(self) -> dict[str, Any]:
        built: dict[str, Any] = {}
        model = None
        for name in self.spec["peers"]:
            if is_built(self.cache, name):
                built[name] = {"cached": True}
                continue
            if model is None:
                model = self._torch_model()  # a checkpoint that does not load fails every peer: raise
            start = time.perf_counter()
            try:
                self._build(name, model)
            except Exception as exc:  # noqa: BLE001 - one peer's engine failing must not stop the others
                traceback.print_exc(file=sys.stderr)
                built[name] = {"cached": False, "error": f"{type(exc).__name__}: {exc}"}
                continue
            built[name] = {"cached": False, "build_s": time.perf_counter() - start}
        return {"built": built, "cache": str(self.cache)}

    def _build(self, name: str, model) -> None:
        from .hub_peer import HUB_MODES
        from .llamacpp_peer import LLAMACPP_TYPES

        if name in LLAMACPP_TYPES:
            self._build_llamacpp(name, model)
        elif name in HUB_MODES:
            self._build_hub(name, model)
        else:
            getattr(self, "_build_" + name.replace("-", "_"))(model)

    def _build_llamacpp(self, name: str, model) -> None:
        from . import llamacpp_peer

        if name != "llamacpp-f16" and not is_built(self.cache, "llamacpp-f16"):
            self._build_llamacpp("llamacpp-f16", model)
        tmp = self._tmp(name)
        checkpoint = Path(str(self.spec["torch"].get("model", "")))
        use_folder = checkpoint if checkpoint.is_dir() and not self.spec["torch"].get("random_weights") else None
        hf_dir = llamacpp_peer.hf_folder_for(use_folder, model, self.folder, tmp)
        record = llamacpp_peer.build(name, self.cache, hf_dir, tmp, self.spec.get("threads"))
        if hf_dir != use_folder and hf_dir.is_dir():
            shutil.rmtree(hf_dir)
        _finish(tmp, peer_dir(self.cache, name), record)

    def _build_hub(self, name: str, model) -> None:
        from . import hub_peer

        if not is_built(self.cache, "optimum-fp32"):
            self._build_optimum_fp32(model)
        tmp = self._tmp(name)
        record = hub_peer.build(name, self.cache, peer_dir(self.cache, "optimum-fp32") / ONNX_FILE, self.folder, tmp,
                                model.config)
        _finish(tmp, peer_dir(self.cache, name), record)

    def _torch_model(self):
        from ..export.checkpoint import load_checkpoint

        torch_spec = self.spec["torch"]
        checkpoint = load_checkpoint(
            torch_spec["model"], random_weights=bool(torch_spec.get("random_weights")),
            seed=int(torch_spec.get("seed") or 0), config_overrides=torch_spec.get("config_overrides") or None,
            task=torch_spec.get("task"),
        )
        return checkpoint.model.eval()

    def _example(self):
        import torch

        ids = torch.full((2, 16), 5, dtype=torch.int64)
        return ids, torch.ones_like(ids)

    def _tmp(self, name: str) -> Path:
        tmp = self.cache / f".{name}.building"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        return tmp

    def _build_optimum_fp32(self, model) -> None:
        import torch

        class LastHiddenState(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, input_ids, attention_mask):
                return self.inner(input_ids=input_ids, attention_mask=attention_mask)[0]

        tmp = self._tmp("optimum-fp32")
        axes = {0: "batch_size", 1: "sequence_length"}
        dynamic = {"input_ids": axes, "attention_mask": axes, "last_hidden_state": axes}
        with torch.inference_mode():
            torch.onnx.export(LastHiddenState(model), self._example(), str(tmp / ONNX_FILE), dynamo=False,
                              input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
                              dynamic_axes=dynamic, opset_version=OPSET, do_constant_folding=True)
        _finish(tmp, peer_dir(self.cache, "optimum-fp32"),
                {"peer": "optimum-fp32", "file": ONNX_FILE, "engine": "onnxruntime",
                 "recipe": f"torch.onnx.export (TorchScript), opset {OPSET}, dynamic batch and length"})

    def _build_optimum_int8(self, model) -> None:
        if not is_built(self.cache, "optimum-fp32"):
            self._build_optimum_fp32(model)
        from onnxruntime.quantization import QuantType, quantize_dynamic

        tmp = self._tmp("optimum-int8")
        # AutoQuantizationConfig.avx512_vnni(is_static=False): QOperator / IntegerOps, u8 activations
        # (asymmetric), s8 symmetric per-channel weights, reduce_range off, MatMul and Add; optimum drives
        # ORT's ONNXQuantizer without MatMulConstBOnly, so activation x activation MatMuls are quantized too.
        quantize_dynamic(
            str(peer_dir(self.cache, "optimum-fp32") / ONNX_FILE), str(tmp / ONNX_FILE),
            op_types_to_quantize=["MatMul", "Add"], per_channel=True, reduce_range=False,
            weight_type=QuantType.QInt8,
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False, "MatMulConstBOnly": False,
                           "EnableSubgraph": False},
        )
        _finish(tmp, peer_dir(self.cache, "optimum-int8"),
                {"peer": "optimum-int8", "file": ONNX_FILE, "engine": "onnxruntime",
                 "recipe": "dynamic int8 as AutoQuantizationConfig.avx512_vnni(is_static=False): QOperator, "
                           "u8 activations, s8 symmetric per-channel weights, MatMul+Add"})

    def _convert_openvino(self, model):
        """The converted model, once per build (the int8 peer quantizes a copy of the same conversion)."""
        ov = _import_openvino()
        if getattr(self, "_ov_model", None) is None:
            ids, mask = self._example()
            self._ov_model = ov.convert_model(model, example_input={"input_ids": ids, "attention_mask": mask})
        return ov, self._ov_model.clone()

    def _build_openvino(self, model) -> None:
        ov, ov_model = self._convert_openvino(model)
        tmp = self._tmp("openvino")
        ov.save_model(ov_model, str(tmp / OV_FILE), compress_to_fp16=False)
        _finish(tmp, peer_dir(self.cache, "openvino"),
                {"peer": "openvino", "file": OV_FILE, "engine": "openvino",
                 "recipe": "openvino.convert_model of the transformers model, fp32 weights; runs in the "
                           "CPU plugin's default inference precision"})

    def _build_openvino_int8(self, model) -> None:
        try:
            import nncf
        except ImportError:
            raise missing_dependency("nncf", "peers", "The OpenVINO int8 peer (--peers openvino)") from None
        ov, ov_model = self._convert_openvino(model)
        items = self._calibration_items()
        # optimum-intel's OVQuantizationConfig defaults: 8 bits, asymmetric activations (preset MIXED),
        # the transformer model type, fast bias correction, no overflow fix.
        quantized = nncf.quantize(
            ov_model, nncf.Dataset(items), subset_size=len(items), model_type=nncf.ModelType.TRANSFORMER,
            preset=nncf.QuantizationPreset.MIXED, fast_bias_correction=True,
            advanced_parameters=nncf.AdvancedQuantizationParameters(overflow_fix=nncf.OverflowFix.DISABLE),
        )
        tmp = self._tmp("openvino-int8")
        ov.save_model(quantized, str(tmp / OV_FILE), compress_to_fp16=False)
        _finish(tmp, peer_dir(self.cache, "openvino-int8"),
                {"peer": "openvino-int8", "file": OV_FILE, "engine": "openvino",
                 "recipe": f"NNCF static int8, transformer preset, {len(items)} STS-B sentences (unpadded, "
                           f"at most {CALIBRATION_LENGTH} tokens)"})

    def _calibration_items(self) -> list[dict[str, np.ndarray]]:
        """Each calibration text at its own length, up to 384 tokens, unpadded.

        sentence-transformers pads them to 384; the converted ModernBERT then yields NaN in every
        position once a padded input is longer than the 128-token local window (OpenVINO 2026.4,
        transformers 5), and NaN statistics would make the int8 scales meaningless."""
        from gte_onnx.folder.manifest import Manifest
        from gte_onnx.inference.tokenize import TextTokenizer

        manifest = Manifest.load(self.folder)
        tokenizer = TextTokenizer.from_folder(self.folder, manifest.max_length, manifest.tokenizer.get("pad_token_id"))
        count = int(self.spec.get("calibration_texts") or CALIBRATION_TEXTS)
        length = min(CALIBRATION_LENGTH, manifest.max_length)
        encoded = tokenizer.encode(_calibration_texts(count), "end")
        items = []
        for ids in encoded.ids:
            row = np.asarray([list(ids)[:length]], dtype=np.int64)
            items.append({"input_ids": row, "attention_mask": np.ones_like(row)})
        return items


class PeerBackend:
    """One built peer, loaded from the cache and timed like the ONNX variants (the session call only)."""

    def __init__(self, spec: Mapping[str, Any]):
        self.name = spec["peer"]
        self.dir = peer_dir(spec["cache"], self.name)
        self.threads = spec.get("threads")
        self.spinning = spec.get("spinning", "stop")
        self.record: dict[str, Any] = {}
        self._run = None

    def load(self) -> dict[str, Any]:
        record_file = self.dir / "peer.json"
        if not record_file.is_file():
            raise FileNotFoundError(f"peer {self.name} is not built in {self.dir}")
        self.record = json.loads(record_file.read_text(encoding="utf-8"))
        if self.record["engine"] == "onnxruntime":
            info = self._load_onnxruntime()
        else:
            info = self._load_openvino()
        return {"peer": self.name, "recipe": self.record.get("recipe"), **info}

    def _load_onnxruntime(self) -> dict[str, Any]:
        import onnxruntime as ort

        from .config import ORT_SPINNING_CONFIG

        # A default session, as optimum's ORTModel makes it, with the bench's thread count and spinning.
        options = ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = int(self.threads)
        for key, value in ORT_SPINNING_CONFIG[self.spinning].items():
            options.add_session_config_entry(key, value)
        session = ort.InferenceSession(str(self.dir / self.record["file"]), sess_options=options,
                                       providers=[CPU])
        self._run = lambda feed: session.run(["last_hidden_state"], dict(feed))[0]
        return {"engine": "onnxruntime", "onnxruntime": ort.__version__}

    def _load_openvino(self) -> dict[str, Any]:
        ov = _import_openvino()
        core = ov.Core()
        # optimum-intel's OVModel compiles with the latency hint; the thread count is the bench's.
        config = {"PERFORMANCE_HINT": "LATENCY"}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = int(self.threads)
        compiled = core.compile_model(str(self.dir / self.record["file"]), "CPU", config)
        request = compiled.create_infer_request()

        def run(feed):
            request.infer(dict(feed))
            return request.get_output_tensor(0).data.copy()

        self._run = run
        precision = compiled.get_property("INFERENCE_PRECISION_HINT")
        precision = precision.to_string() if hasattr(precision, "to_string") else str(precision)
        return {"engine": "openvino", "openvino": ov.__version__, "inference_precision": precision}

    def prepare(self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The peer's feed: no mask means every position is a token (the bench's unpadded shapes); a
        padded batch passes its mask (right padding, 1 for tokens), as a data-set evaluation does."""
        ids = np.ascontiguousarray(input_ids, dtype=np.int64)
        if attention_mask is None:
            mask = np.ones_like(ids)
        else:
            mask = np.ascontiguousarray(attention_mask, dtype=np.int64)
            if mask.shape != ids.shape:
                raise ValueError(f"attention_mask has shape {mask.shape}, input_ids {ids.shape}")
        return {"input_ids": ids, "attention_mask": mask}

    def run(self, feed: Mapping[str, np.ndarray]) -> float:
        start = time.perf_counter()
        self._run(feed)
        return time.perf_counter() - start

    def hidden(self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
        """The last hidden state (B, L, H); the caller pools it the way the model folder says."""
        return np.asarray(self._run(self.prepare(input_ids, attention_mask)), dtype=np.float32)

    def run_corpus(self, texts: Sequence[str], batch_size: int) -> dict[str, Any]:
        raise RuntimeError("peers are measured on the shapes only")
