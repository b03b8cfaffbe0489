"""The run's outputs: a terminal table (Markdown pipes, so it pastes into the README), the JSON record,
and a PNG of speed against fidelity per variant (matplotlib, from the [bench] extra)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import missing_dependency
from .machine import short_label
from gte_onnx.defaults import CPU, CUDA

# The figure shown for a variant's fidelity, first one present wins (names from gte_onnx.parity.gates).
HEADLINE_FIGURES = (
    "centred_cosine_mean",
    "centred_cosine_min",
    "cosine_mean",
    "cosine_min",
    "logit_spearman",
    "score_spearman",
    "max_abs_diff",  # fp32 records its error against PyTorch
    "logit_max_abs_diff",
)
# Figures where higher is better and 1.0 is perfect: the fp32 reference sits at 1.0 on the plot.
SIMILARITY_FIGURES = ("centred_cosine_mean", "centred_cosine_min", "cosine_mean", "cosine_min",
                      "logit_spearman", "score_spearman")
# Data-set figures worth a column of their own when recorded.
DROP_FIGURES = ("sts_drop", "cisi_ndcg_drop")
PROVIDER_SHORT = {CPU: "CPU", CUDA: "CUDA", "onnxruntime": "ORT",
                  "openvino": "OpenVINO", "llama.cpp": "llama.cpp", "gte-onnx": "CPU"}


# Nested fidelity records that hold figures of the variant itself (not gate limits or fp32's scores).
FIGURE_GROUPS = ("figures", "data")


def fidelity_figures(fidelity: Mapping[str, Any]) -> dict[str, float]:
    """Numeric figures of a variant's recorded fidelity: the flat ones, then those under "figures"/"data"."""
    out: dict[str, float] = {}

    def take(mapping: Mapping[str, Any]) -> None:
        for key, value in mapping.items():
            if isinstance(value, bool):
                continue
            if isinstance(value, (int, float)) and math.isfinite(value) and key not in out:
                out[key] = float(value)

    take(fidelity)
    for group in FIGURE_GROUPS:
        if isinstance(fidelity.get(group), Mapping):
            take(fidelity[group])
    return out


def headline_figure(fidelity: Mapping[str, Any]) -> tuple[str, float] | None:
    figures = fidelity_figures(fidelity)
    for name in HEADLINE_FIGURES:
        if name in figures:
            return name, figures[name]
    return None


def _fmt(value: float | None, spec: str, missing: str = "-") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return missing
    return format(value, spec)


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    ms = seconds * 1000
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}"


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.0f}"


def _pipe_table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if r else ("-" * (w + 2)) for w, r in zip(widths, right)) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def results_table(result: Mapping[str, Any]) -> str:
    header = ["variant", "EP", "shape", "median ms", "p95 ms", "IQR %", "texts/s", "tokens/s",
              "peak RSS MB", "vs torch fp32", "vs torch bf16"]
    baselines = {r["name"] for r in result["results"] if r["kind"] == "torch"}
    keep = [i for i, h in enumerate(header) if not h.startswith("vs ") or h.replace("vs torch ", "torch-") in baselines]
    header = [header[i] for i in keep]
    rows = []
    for r in result["results"]:
        if r["error"] is not None:
            cells = [r["name"], PROVIDER_SHORT.get(r["provider"], r["provider"]), r["shape"],
                     "failed"] + ["-"] * (len(header) - 4)
        else:
            iqr_pct = 100 * r["iqr_s"] / r["median_s"] if r["median_s"] else None
            cells = [
                r["name"], PROVIDER_SHORT.get(r["provider"], r["provider"]), r["shape"],
                _ms(r["median_s"]), _ms(r["p95_s"]), _fmt(iqr_pct, ".0f"),
                _fmt(r["texts_per_s"], ".1f"), _fmt(r["tokens_per_s"], ".0f"), _mb(r["peak_rss_bytes"]),
                _ratio(r["vs_torch_fp32"]), _ratio(r["vs_torch_bf16"]),
            ]
            cells = [cells[i] for i in keep]
        rows.append(cells)
    right = [False, False, False] + [True] * (len(header) - 3)
    return _pipe_table(header, rows, right)


def measured_cell(measured: Mapping[str, Any] | None) -> str:
    """--fidelity's figures against PyTorch fp32, in one cell."""
    if not measured:
        return "-"
    if measured.get("reference"):
        return "reference"
    if measured.get("error"):
        return "failed: " + _first_line(measured["error"], 60)
    parts = []
    if "max_abs_diff" in measured:
        parts.append(f"max|diff| {measured['max_abs_diff']:.2g}")
    if "centred_cosine_mean" in measured:
        parts.append(f"centred cos {measured['centred_cosine_mean']:.5f}")
    mark = padded_mark(measured)
    if mark:
        parts.append(mark)
    return ", ".join(parts) or "-"


def padded_mark(measured: Mapping[str, Any] | None) -> str:
    """The padded-batch verdict in words: "" when the vectors stay put (or it was not measured)."""
    if not measured:
        return ""
    verdict = measured.get("padded")
    if verdict == "NaN":
        return f"PADDED: NaN in {measured.get('padded_nonfinite_rows')}/{measured.get('padded_rows')} rows"
    if verdict == "moves":
        return f"PADDED: moves (cos {measured.get('padded_cosine_min', float('nan')):.4f})"
    if verdict == "ok":
        return f"padded ok ({measured.get('padded_max_abs_diff', 0.0):.1g})"
    return ""


def contenders_table(result: Mapping[str, Any]) -> str:
    header = ["variant", "EP", "file MB", "import s", "load s", "fidelity (recorded)", "gate"]
    measured = any(c.get("measured_fidelity") for c in result["contenders"])
    if measured:
        header.append("fidelity vs PyTorch fp32 (measured)")
    rows = []
    for c in result["contenders"]:
        figures = fidelity_figures(c.get("fidelity") or {})
        parts = []
        head = headline_figure(c.get("fidelity") or {})
        if head:
            parts.append(f"{head[0]} {head[1]:.4g}")
        parts += [f"{name} {figures[name]:.2f}" for name in DROP_FIGURES if name in figures]
        gate = {True: "pass", False: "FAIL", None: "-"}[c.get("passed")]
        rows.append([
            c["name"], PROVIDER_SHORT.get(c["provider"], c["provider"]), _mb(c.get("file_bytes")),
            _fmt(c.get("import_s"), ".2f"), _fmt(c.get("load_s"), ".2f"), ", ".join(parts) or "-",
            gate if c.get("error") is None else "load failed",
        ] + ([measured_cell(c.get("measured_fidelity"))] if measured else []))
    return _pipe_table(header, rows, [False, False, True, True, True, False, False] + [False] * measured)


def summary_table(result: Mapping[str, Any]) -> str:
    """One row per contender, read at a glance: median ms per shape, the largest peak RSS over the
    shapes, load s, file MB, the measured centred cosine and the padded-batch verdict."""
    shapes = [s for s in result["settings"]["shapes"]]
    cells: dict[tuple[str, str], Mapping[str, Any]] = {
        (r["key"], r["shape"]): r for r in result["results"] if r["mode"] == "shape"}
    measured = any(c.get("measured_fidelity") for c in result["contenders"])
    header = ["contender", "engine", *[f"{s} ms" for s in shapes], "peak RSS GB", "load s", "file MB"]
    if measured:
        header += ["centred cos", "padded batch"]
    rows = []
    for c in result["contenders"]:
        line = [c["name"], PROVIDER_SHORT.get(c["provider"], c["provider"])]
        peaks = []
        for shape in shapes:
            r = cells.get((c["key"], shape))
            if r is None or r["error"] is not None:
                line.append("failed")
            else:
                line.append(_ms(r["median_s"]))
                if r.get("peak_rss_bytes"):
                    peaks.append(r["peak_rss_bytes"])
        line += [f"{max(peaks) / 1e9:.2f}" if peaks else "-", _fmt(c.get("load_s"), ".2f"), _mb(c.get("file_bytes"))]
        if measured:
            m = c.get("measured_fidelity") or {}
            if m.get("reference"):
                ccos = "reference"
            elif "centred_cosine_mean" in m:
                ccos = f"{m['centred_cosine_mean']:.5f}"
            else:
                ccos = "-"
            verdict = m.get("padded") or "-"
            if verdict == "NaN":
                verdict = f"NaN ({m.get('padded_nonfinite_rows')}/{m.get('padded_rows')} rows)"
            elif verdict == "moves":
                verdict = f"moves (cos {m.get('padded_cosine_min', float('nan')):.4f})"
            line += [ccos, verdict]
        if c.get("error"):
            line = line[:2] + ["failed"] * (len(header) - 2)
        rows.append(line)
    right = [False, False] + [True] * (len(header) - 2 - 2 * measured) + [True, False][:2 * measured]
    errors = {c["name"]: c["error"] for c in result["contenders"] if c.get("error")}
    for c in result["contenders"]:  # loaded, then died or failed: the first reason the run recorded
        why = (c.get("measured_fidelity") or {}).get("error") or next(
            (r["error"] for r in result["results"] if r["key"] == c["key"] and r["error"]), None)
        if why and c["name"] not in errors:
            errors[c["name"]] = why
    if errors:  # a contender that could not build or load says why, in the table itself
        header.append("why it failed")
        right.append(False)
        for line in rows:
            line.append(_first_line(errors[line[0]], 110) if line[0] in errors else "")
    return _pipe_table(header, rows, right)


def failures(result: Mapping[str, Any]) -> list[str]:
    """One line per distinct failure: which contender, where, and the first line of why."""
    lines: list[str] = []
    seen: set[tuple[str, str]] = set()
    for c in result["contenders"]:
        if c.get("error"):
            seen.add((c["key"], c["error"]))
            lines.append(f"{c['key']}: {_first_line(c['error'], 300)}")
    for r in result["results"]:
        if r["error"] and (r["key"], r["error"]) not in seen:
            seen.add((r["key"], r["error"]))
            lines.append(f"{r['key']} at {r['shape']}: {_first_line(r['error'], 300)}")
    return lines


def _first_line(text: str, limit: int = 90) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def format_report(result: Mapping[str, Any]) -> str:
    """The whole terminal report: what ran where, the contenders, the measurements, the ranking."""
    settings = result["settings"]
    policy = settings["policy"]
    lines = [
        (f"model: {result['model']['folder']} ({result['model']['task']}; source "
         f"{result['model']['source'].get('model_id', '?')}"
         f"{', random weights' if result['model']['source'].get('random_weights') else ''})"),
        (f"machine: {short_label(result['machine'])}; threads {settings['threads'] or 'default'}; "
         f"load average at start {_load(result['machine'])}"),
        f"command: {result.get('command') or '-'}",
        f"repeats: median of {policy['min_repeats']}-{policy['max_repeats']} interleaved runs per cell"
        + (f" ({policy['heavy_min_repeats']} when every run takes {policy['heavy_s']:g} s or more)"
           if policy.get("heavy_s") else "")
        + f" after {policy['min_warmups']}+ warm-ups; peak RSS per {settings['rss_scope']}, one process per "
        "variant; n per row in the JSON",
        (f"schedule: seeded random order per round, mirrored every other round (seed "
         f"{settings.get('schedule_seed')}), {settings.get('gap_s', 0):g} s idle before each timed run, "
         f"thread spinning {settings.get('spinning')}; every round's order in the JSON"),
        "",
        contenders_table(result),
        "",
        results_table(result),
        "",
        summary_table(result),
    ]
    twins = result.get("twins")
    if twins:
        lines.append("")
        lines.append(twins_line(twins))
    problems = failures(result)
    if problems:
        lines.append("\nfailures:")
        lines.extend(f"  {line}" for line in problems)
    ranking = result.get("ranking") or {}
    for provider, names in ranking.items():
        lines.append(f"\nspeed ranking on {provider}: {', '.join(names) if names else '(none measured)'}")
    lines.append(f"\ntook {result['duration_s']:.0f} s")
    return "\n".join(lines)


def twins_line(twins: Mapping[str, Any]) -> str:
    """The fairness check in one line: the twin's median over the original's, per cell."""
    cells = ", ".join(f"{cell} {ratio:.3f}" for cell, ratio in twins["ratios"].items()) or "none measured"
    low, high = twins["tolerance"]
    verdict = (f"OUTSIDE {low:g}..{high:g} at {', '.join(twins['outside'])}" if twins["outside"]
               else f"all within {low:g}..{high:g}")
    return f"twins {twins['of']} / {twins['twin']} (median ratio, twin / original): {cells}; {verdict}"


def _load(machine: Mapping[str, Any]) -> str:
    load = machine.get("load_average_at_start")
    return "-" if not load else f"{load[0]:.2f}"


def write_json(result: Mapping[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return path


def _reference_shape(rows: Sequence[Mapping[str, Any]]) -> str | None:
    """The shape the plot's speed axis uses: 32x128 (batched passages) when measured, else the most tokens."""
    shapes = {r["shape"]: r["tokens"] or 0 for r in rows if r["mode"] == "shape" and r["error"] is None}
    if not shapes:
        return None
    return "32x128" if "32x128" in shapes else max(shapes, key=lambda s: shapes[s])


def _plot_figure(variants: Sequence[tuple[str, Mapping[str, float]]]) -> str | None:
    """The fidelity figure for the x axis: the first headline figure any quantized variant recorded,
    else fp32's own (its error against PyTorch), else None (the plot falls back to file size)."""
    for pool in ([f for name, f in variants if name != "fp32"], [f for _, f in variants]):
        for name in HEADLINE_FIGURES:
            if any(name in figures for figures in pool):
                return name
    return None


# The x axis with --fidelity: every variant and peer measured the same way against PyTorch fp32.
MEASURED_FIGURE = "centred_cosine_mean"


def _point_label(r: Mapping[str, Any]) -> str:
    return f"{r['name']} ({PROVIDER_SHORT.get(r['provider'], r['provider'])})"


def _plotted_rows(rows, shape, kinds):
    for r in rows:
        if r["mode"] != "shape" or r["shape"] != shape or r["error"] is not None or r["kind"] not in kinds:
            continue
        if r.get("twin_of"):
            continue  # the same point as its original
        yield r


def _measured_points(rows, shape, contenders) -> list[tuple[Mapping[str, Any], float]]:
    out = []
    for r in _plotted_rows(rows, shape, ("onnx", "peer")):
        figures = contenders[r["key"]].get("measured_fidelity") or {}
        if MEASURED_FIGURE in figures:
            out.append((r, figures[MEASURED_FIGURE]))
    return out


def _recorded_points(rows, shape, contenders) -> tuple[str | None, list[tuple[Mapping[str, Any], float, str]]]:
    """Without --fidelity: the variants' figures recorded in the manifest (peers have none)."""
    points = [(r, fidelity_figures(contenders[r["key"]].get("fidelity") or {}))
              for r in _plotted_rows(rows, shape, ("onnx",))]
    figure_name = _plot_figure([(r["variant"], figures) for r, figures in points])
    marks = []
    for r, figures in points:
        label = _point_label(r)
        if figure_name is None:
            x = (contenders[r["key"]].get("file_bytes") or 0) / 1e6
        elif figure_name in figures:
            x = figures[figure_name]
        elif r["variant"] == "fp32" and figure_name in SIMILARITY_FIGURES:
            # The other variants' figures are measured against fp32: it is the reference, at 1.0.
            x, label = 1.0, label + " reference"
        else:
            continue
        marks.append((r, x, label))
    return figure_name, marks


def pareto_front(points: Sequence[tuple[str, float, float]]) -> list[str]:
    """The names of the points no other point beats on both axes (both higher-is-better): a point is
    dominated when another is at least as good on both and strictly better on one. In input order."""
    front = []
    for name, a, b in points:
        dominated = any((a2 >= a and b2 >= b) and (a2 > a or b2 > b) for n2, a2, b2 in points if n2 != name)
        if not dominated:
            front.append(name)
    return front


# The plot's fidelity axis: 1 - centred cosine on a log scale, floored here (fp32 exports sit at ~1e-12).
CLOSENESS_FLOOR = 1e-7


def quality_drops(quality: Mapping[str, Any] | None) -> dict[str, float]:
    """Contender name -> MiniLM STS-B drop (points, vs our fp32) from dev/peer_data_fidelity.py's JSON:
    its rows "ours-<variant>" are our variants, the others are peers of the same name."""
    if not quality:
        return {}
    out = {}
    for name, row in (quality.get("rows") or {}).items():
        drop = (row.get("drops_vs_ours_fp32") or {}).get("sts_drop")
        if isinstance(drop, (int, float)) and math.isfinite(drop):
            out[name[len("ours-"):] if name.startswith("ours-") else name] = float(drop)
    return out


def _panel(ax, points, xlabel: str, log_x: bool) -> None:
    """One speed-vs-fidelity panel: points (label, x = how far off, latency ms, kind, padded verdict); the
    Pareto front (lower latency, smaller x; contenders whose padded vectors are NaN left off) as a line."""
    for label, x, ms, kind, verdict in points:
        broken = verdict in ("NaN", "moves")
        ax.scatter([x], [ms], s=46, marker="o" if kind == "onnx" else "s",
                   facecolors="none" if broken else None, edgecolors="red" if broken else None,
                   color=None if broken else ("tab:blue" if kind == "onnx" else "tab:orange"))
        ax.annotate(label + (f" [{verdict} padded]" if broken else ""), (x, ms), textcoords="offset points",
                    xytext=(4, 3), fontsize=7, color="red" if broken else "black")
    # Both panels' x values say how far off a form is (1 - centred cosine, or a score drop): smaller is better.
    candidates = [(p[0], -p[2], -p[1]) for p in points if p[4] != "NaN"]
    front = set(pareto_front(candidates))
    line = sorted((p for p in points if p[0] in front), key=lambda p: p[1])
    if line:
        ax.plot([p[1] for p in line], [p[2] for p in line], "--", color="green", linewidth=1,
                label="Pareto front (faster or more faithful than every other point)")
        ax.legend(fontsize=7, loc="lower left")
    if log_x:
        ax.set_xscale("log")
        ax.invert_xaxis()
    ax.set_yscale("log")
    ax.invert_yaxis()
    ax.set_xlabel(xlabel, fontsize=8)
    ax.grid(True, alpha=0.3, which="both")


def plot(result: Mapping[str, Any], path: str | Path, quality: Mapping[str, Any] | None = None) -> Path:
    """Speed against fidelity, one labelled point per variant and peer, the Pareto front marked.

    With --fidelity: median latency at the reference shape (32x128 when measured) against 1 - the
    measured centred cosine vs PyTorch fp32 (log); contenders whose vectors turn NaN or move inside a
    padded batch are drawn hollow and red and left off the front. With `quality` (the JSON of
    dev/peer_data_fidelity.py on all-MiniLM-L6-v2) a second panel puts the same latency against each
    form's real-weights STS-B drop. Without --fidelity: the variants' recorded figures (as before)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise missing_dependency("matplotlib", "bench", "gte-onnx bench --plot") from None
    rows = result["results"]
    shape = _reference_shape(rows)
    contenders = {c["key"]: c for c in result["contenders"]}
    measured = _measured_points(rows, shape, contenders)
    drops = quality_drops(quality)
    title = f"{Path(result['model']['folder']).name}: speed vs fidelity\n{short_label(result['machine'])}"
    if measured:
        panels = 2 if drops else 1
        fig, axes = plt.subplots(1, panels, figsize=(7.5 * panels, 6), squeeze=False)
        points = []
        for r, ccos in measured:
            verdict = (contenders[r["key"]].get("measured_fidelity") or {}).get("padded")
            points.append((_point_label(r), max(1.0 - ccos, CLOSENESS_FLOOR), r["median_s"] * 1000, r["kind"], verdict))
        _panel(axes[0][0], points, "1 - centred cosine vs PyTorch fp32 (probe texts, one at a time; log, right = closer)",
               log_x=True)
        axes[0][0].set_ylabel(f"median latency at {shape}, ms (log, up = faster)")
        if drops:
            by_name = {r["name"]: (r, p) for (r, _), p in zip(measured, points)}
            second = [(p[0], drops[name], p[2], p[3], p[4]) for name, (r, p) in by_name.items() if name in drops]
            _panel(axes[0][1], second, "all-MiniLM-L6-v2 STS-B Spearman drop vs our fp32, points (real weights; "
                   "right = smaller drop)", log_x=False)
            axes[0][1].invert_xaxis()
            axes[0][1].set_ylabel(f"median latency at {shape}, ms (the gte run)")
        fig.suptitle(title, fontsize=9)
    else:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        figure_name, marks = _recorded_points(rows, shape, contenders)
        for r, x, label in marks:
            ax.scatter([x], [r["tokens_per_s"]], s=40, marker="o" if r["kind"] == "onnx" else "s")
            ax.annotate(label, (x, r["tokens_per_s"]), textcoords="offset points", xytext=(5, 5), fontsize=9)
        for r in rows:
            if r["kind"] == "torch" and r["mode"] == "shape" and r["shape"] == shape and r["error"] is None:
                ax.axhline(r["tokens_per_s"], linestyle="--", linewidth=1, color="gray")
                ax.annotate(r["name"], (ax.get_xlim()[0], r["tokens_per_s"]), textcoords="offset points",
                            xytext=(2, 3), fontsize=8, color="gray")
        ax.set_xlabel(figure_name if figure_name else "file size (MB) - no fidelity recorded")
        ax.set_ylabel(f"tokens/s at {shape}")
        ax.set_title(title, fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.margins(x=0.15, y=0.1)  # room for the labels
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
