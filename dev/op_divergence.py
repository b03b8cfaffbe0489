"""Where a variant's outputs on an emulated CPU family first leave this CPU's: every node's output compared.

    python dev/op_divergence.py FOLDER [--variant int8] [--family x86-avx2] [--doc 3] [--u8-weights]
                                [--plain-attention]

Runs the variant's graph with every node output exposed, once natively and once under the family's
emulator (scripts/setup-emulation.sh; x86-avx2 only: it runs this venv), on one CISI document, at
optimisation level "none" (the level the int8 file loads at) and one thread, and prints the first nodes
whose outputs differ (op type, max |diff|) and the final output's max |diff|. With --u8-weights the
graph's s8 MatMulIntegerToFloat weights are first rewritten to u8 with zero point 128 (exact, lossless),
which takes the integer GEMMs off the saturating u8 x s8 path: what then still differs is float
arithmetic. With --plain-attention the attention nodes of an int8 file built with `--int8-attention fused`
are written out as plain ops by quantize.attention.plain_attention (what `gte-onnx quantize` now does
itself), the ops that dev/isa_invariant_ops.py finds equal on both instruction sets. The finding is in
docs/cpu-support.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def u8_weights(model) -> int:
    """Rewrite every s8 MatMulIntegerToFloat weight to u8 + 128 with a zero point of 128 (same integers)."""
    from onnx import TensorProto, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    done: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type != "MatMulIntegerToFloat" or node.input[1] not in inits:
            continue
        b = node.input[1]
        if inits[b].data_type != TensorProto.INT8 and b not in done:
            continue
        if b not in done:
            w = numpy_helper.to_array(inits[b]).astype(np.int16) + 128
            inits[b].CopyFrom(numpy_helper.from_array(w.astype(np.uint8), b))
            zp = numpy_helper.from_array(np.full(list(inits[node.input[3]].dims), 128, np.uint8), b + "_zp128")
            model.graph.initializer.append(zp)
            done[b] = zp.name
        while len(node.input) < 6:
            node.input.append("")
        node.input[5] = done[b]
    return len(done)


def child(spec_path: str, out: str) -> None:
    """Run the exposed graph on the document and save every output (runs natively or emulated)."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    spec = json.loads(Path(spec_path).read_text())
    tok = Tokenizer.from_file(spec["tokenizer"])
    tok.enable_truncation(spec["max_length"])
    ids = np.array([tok.encode(spec["text"]).ids], dtype=np.int64)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(spec["model"], options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    available = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    feed = {i.name: available[i.name] for i in session.get_inputs()}
    np.savez(out, **{f"o{i}": r for i, r in enumerate(session.run(None, feed))})
    Path(out + ".json").write_text(json.dumps(names))


def main(argv: list[str]) -> int:
    import onnx

    from gte_onnx.folder.manifest import Manifest
    from gte_onnx.parity.datasets import load_cisi

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--variant", default="int8")
    parser.add_argument("--family", default="x86-avx2")
    parser.add_argument("--doc", type=int, default=3, help="which CISI document (0-based)")
    parser.add_argument("--u8-weights", action="store_true")
    parser.add_argument("--plain-attention", action="store_true")
    parser.add_argument("--show", type=int, default=12, help="how many differing nodes to print")
    args = parser.parse_args(argv)
    folder = Path(args.folder)
    manifest = Manifest.load(folder)
    model = onnx.load(str(folder / manifest.variant(args.variant).file))
    if args.u8_weights:
        print(f"rewrote {u8_weights(model)} s8 weights to u8 (zero point 128)")
    if args.plain_attention:
        from gte_onnx.quantize.attention import plain_attention

        print(f"attention: {plain_attention(model).record()}")
    producer = {o: n for n in model.graph.node for o in n.output}
    known = {o.name for o in model.graph.output}
    for node in model.graph.node:
        for name in node.output:
            if name and name not in known:
                model.graph.output.append(onnx.ValueInfoProto(name=name))
                known.add(name)
    work = Path(tempfile.mkdtemp(prefix="op-divergence-"))
    onnx.save(model, str(work / "exposed.onnx"), save_as_external_data=True, location="exposed.onnx.data")
    text = list(load_cisi().documents.values())[args.doc]
    spec = work / "spec.json"
    spec.write_text(json.dumps({"model": str(work / "exposed.onnx"), "tokenizer": str(folder / "tokenizer.json"),
                                "max_length": manifest.max_length, "text": text}))
    subprocess.run([sys.executable, __file__, "--child", str(spec), str(work / "native.npz")], check=True)
    emu_spec = importlib.util.spec_from_file_location("emu", ROOT / "scripts" / "emulation" / "run.py")
    emu = importlib.util.module_from_spec(emu_spec)
    emu_spec.loader.exec_module(emu)
    result = emu.run_python(args.family, [__file__, "--child", str(spec), str(work / "emulated.npz")], timeout=None)
    if result.returncode != 0:
        print(result.stderr[-3000:], file=sys.stderr)
        return 1
    names = json.loads((work / "native.npz.json").read_text())
    a, b = np.load(work / "native.npz"), np.load(work / "emulated.npz")
    final = names.index(manifest.output)
    diff = np.abs(a[f"o{final}"].astype(np.float64) - b[f"o{final}"].astype(np.float64)).max()
    print(f"{manifest.output} (the graph's output): max |diff| {diff:.3g}\nfirst differing nodes, in graph order:")
    shown = 0
    for i, name in enumerate(names):
        x, y = a[f"o{i}"], b[f"o{i}"]
        if i == final or x.dtype.kind not in "fiu" or x.shape != y.shape or not x.size:
            continue
        diff = float(np.abs(x.astype(np.float64) - y.astype(np.float64)).max())
        if diff > 0 and shown < args.show:
            shown += 1
            node = producer.get(name)
            print(f"  {name:<48} {node.op_type if node else '-':<22} max |diff| {diff:.3g}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit(main(sys.argv[1:]))
