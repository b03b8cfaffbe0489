"""Phase `report`: every phase's results/<phase>.json merged into $OUT/gpu_check.json, and a short table
printed last (the device tool returns only the end of the output)."""

from __future__ import annotations

import json
from pathlib import Path

from checkkit import Settings, read_json

PHASES = ("prep", "install", "ort")
# CUDA's words when a module has no usable image for the GPU (what a bad slim payload would cause).
KERNEL_IMAGE_SIGNS = ("no kernel image", "NoKernelImage", "InvalidKernelImage", "device kernel image is invalid",
                      "invalid device function")


def load_results(settings: Settings) -> dict:
    return {p: r for p in PHASES if (r := read_json(settings.results_dir / f"{p}.json")) is not None}


def _fmt(value, spec: str = ".2e") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, (int, float)):
        return format(value, spec)
    return str(value)


def _cell(cell: dict | None, tokens: int) -> str:
    if not cell:
        return "-"
    if "error" in cell:
        return "error"
    ms = cell["median_ms"]
    return f"{ms:8.2f} ({tokens / ms * 1e3 / 1e3:7.1f}k)"


def stage_table(results: dict) -> list[str]:
    lines = ["== stages", f"  {'phase':8} {'stage':22} {'status':8} {'s':>7}  note"]
    for phase, result in results.items():
        for st in result["stages"]:
            tail = (st.get("note") or st.get("error") or "").splitlines()
            lines.append(f"  {phase:8} {st['name']:22} {st['status']:8} {st['seconds']:7.1f}  {(tail[0] if tail else '')[:110]}")
    return lines


def parity_table(results: dict, settings: Settings) -> list[str]:
    ort = results.get("ort", {}).get("data", {})
    tokens, embeds = ort.get("parity_tokens", {}), ort.get("parity_embeddings", {})
    long_key = f"finite_at_{settings.long_length}"
    lines = [f"== parity vs PyTorch fp32 ({settings.device}); tokens: every real token of {len(settings.token_lengths)} "
             "lengths + a padded batch; texts: parity probe set",
             f"  {'variant':12} {'tok max|d|':>10} {'tok rel':>8} {'no NaN@' + str(settings.long_length):>11} "
             f"{'card max|d|':>11} {'cos c.min':>9} {'cos c.mean':>10} {'top10':>6}  gate"]
    for name in dict.fromkeys(list(tokens) + list(embeds)):
        t, e = tokens.get(name, {}), embeds.get(name, {})
        f, gate = e.get("figures", {}), e.get("gate", {})
        verdict = "-" if not gate else ("pass" if gate.get("passed") else "FAIL: " + "; ".join(gate.get("failures", []))[:60])
        lines.append(f"  {name:12} {_fmt(t.get('max_abs_diff')):>10} {_fmt(t.get('relative_error'), '.1e'):>8} "
                     f"{_fmt(t.get(long_key)):>11} {_fmt(f.get('card_max_abs_diff')):>11} "
                     f"{_fmt(f.get('centred_cosine_min'), '.5f'):>9} {_fmt(f.get('centred_cosine_mean'), '.5f'):>10} "
                     f"{_fmt(f.get('topk_overlap'), '.3f'):>6}  {verdict}")
        if "without_tf32" in t:
            lines.append(f"  {'':12} with use_tf32=0: {t['without_tf32']}")
    prep = results.get("prep", {}).get("data", {})
    low = prep.get("torch_reference", {}).get("torch_low_precision_vs_fp32", {})
    for dtype, f in low.items():
        lines.append(f"  {'torch ' + dtype:12} {'':>10} {'':>8} {'':>11} {'':>11} "
                     f"{_fmt(f.get('centred_cosine_min'), '.5f'):>9} {_fmt(f.get('centred_cosine_mean'), '.5f'):>10} "
                     f"{_fmt(f.get('topk_overlap'), '.3f'):>6}  (PyTorch's own {dtype}, for scale)"
                     if "error" not in f else f"  {'torch ' + dtype:12} error: {f['error'][:80]}")
    return lines


def speed_table(results: dict, settings: Settings) -> list[str]:
    from gte_onnx.bench.shapes import parse_shape

    shapes = list(settings.shapes)
    tokens = {label: parse_shape(label).tokens for label in shapes}
    rows: dict[str, dict] = {}
    torch = results.get("prep", {}).get("data", {}).get("torch_bench", {}).get("cells", {})
    ort = results.get("ort", {}).get("data", {}).get("ort_bench", {}).get("cells", {})
    rows.update(torch)
    rows.update(ort)
    lines = [f"== speed on {settings.device}: median ms (k tokens/s); torch = forward on device; "
             "ort run = OnnxModel.run (numpy in/out); ort bound = I/O binding, output left on device",
             f"  {'row':22} " + " ".join(f"{label:>20}" for label in shapes)]
    for name, cells in rows.items():
        if "error" in cells:
            lines.append(f"  {name:22} error: {cells['error'][:90]}")
            continue
        lines.append(f"  {name:22} " + " ".join(f"{_cell(cells.get(label), tokens[label]):>20}" for label in shapes))
    return lines


def header(results: dict, settings: Settings) -> list[str]:
    env = results.get("prep", {}).get("data", {}).get("environment", {})
    ort = results.get("ort", {}).get("data", {}).get("ort_info", {})
    export = results.get("prep", {}).get("data", {}).get("export", {})
    return [f"== gte-onnx device check{' (CPU DRY RUN)' if settings.dry_run else ''}: gpu {env.get('gpu', '-')} | "
            f"python {env.get('python')} | torch {env.get('torch')} (cuda {env.get('torch_cuda')}) | "
            f"onnxruntime {ort.get('version', '-')} | payload {settings.payload if not settings.dry_run else '-'} | "
            f"model {settings.model}{' tiny' if settings.config_overrides else ''}, attention {export.get('attention', '-')}"]


def run_report(settings: Settings) -> int:
    results = load_results(settings)
    text = "\n".join(header(results, settings) + stage_table(results) + parity_table(results, settings)
                     + speed_table(results, settings))
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps({"settings": settings.to_json(), "results": results}, indent=2) + "\n")
    (out / "gpu_check.txt").write_text(text + "\n")
    print(text, flush=True)
    failed = [f"{p}/{s['name']}" for p, r in results.items() for s in r["stages"] if s["status"] == "failed"]
    errors = json.dumps(results)
    if settings.payload == "slim" and any(sign in errors for sign in KERNEL_IMAGE_SIGNS):
        print("== a CUDA kernel image could not be loaded: the slim payload (sm_90 cubins only) may be at fault; "
              "run prepare.sh's PLAN B (full payload)", flush=True)
    missing = [p for p in PHASES if p not in results and not (p == "install" and settings.dry_run)]
    if failed or missing:
        print(f"== NOT ALL GREEN: failed {failed or 'none'}; phases without results {missing or 'none'}", flush=True)
        return 1
    print("== all stages ok", flush=True)
    return 0
