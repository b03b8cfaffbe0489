"""The first load's pipeline, driven from this one place: a checkpoint is converted (gte_onnx.convert), its
variants quantized and gated (gte_onnx.quantize), then ranked by CPU speed (gte_onnx.inference.speed_ranking);
a repo's own ONNX files are imported, gated against their fp32 file and ranked the same way.

This module sits above every stage and is the only one that may import the later ones (docs/architecture.md):
gte_onnx.sources.resolve calls it for a hub id, `gte-onnx export --no-torch` and `gte-onnx import` through
their verbs. Each stage below it imports only the stages before it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from gte_onnx.convert.converter import convert_fp32
from gte_onnx.convert.onnx_import import external_data_files, import_onnx_files
from gte_onnx.convert.validation import DEFAULT_ATOL, WINDOW_EDGE_LENGTHS
from gte_onnx.errors import ModelFolderError, UnsupportedModelError
from gte_onnx.folder.forms import metadata_files, onnx_variant_files, variants_to_import
from gte_onnx.sources.hub import LocalFolder, open_source
from gte_onnx.inference.speed_ranking import FIRST_LOAD_SHAPES, rank_variants


def convert_checkpoint(
    source: Path,
    out_dir: Path,
    *,
    variants: Sequence[str] = ("int8",),
    model_id: str | None = None,
    revision: str | None = None,
    log: Callable[[str], None] = print,
    task: str | None = None,
    validate_lengths: Sequence[int] = WINDOW_EDGE_LENGTHS,
    atol: float = DEFAULT_ATOL,
    rank: bool = True,
    evaluation: str = "probe",
) -> Path:
    """Convert the checkpoint folder `source` into a complete model folder at `out_dir`: model.onnx
    validated against the numpy reference, then each of `variants` with its fidelity against fp32, and with
    `rank` their CPU speed measured into the manifest's speed_ranking, which variant="auto" reads.

    `evaluation` is the quantize fidelity check: "probe" (default) gates each variant on the parity probe
    set in seconds, so a first load stays short; "full" adds the STS-B and CISI drops (minutes at full size).
    Raises UnsupportedModelError for other architectures, CheckpointFormatError for unreadable or incomplete
    weights, ExportValidationError when the graph disagrees with the reference."""
    out = convert_fp32(source, out_dir, model_id=model_id, revision=revision, log=log, task=task,
                       validate_lengths=validate_lengths, atol=atol)
    if variants:
        from gte_onnx.quantize import QuantizeOptions, quantize_folder

        quantize_folder(out, list(variants), QuantizeOptions(evaluation=evaluation), log=log)
        if rank:
            rank_variants(out, shapes=FIRST_LOAD_SHAPES, record=True, log=log)
    return out


def import_onnx(
    source: str | Path,
    out_dir: str | Path,
    *,
    variants: Iterable[str] | None = None,
    model_id: str | None = None,
    revision: str | None = None,
    data_sets: tuple[str, ...] = (),
    log: Callable[[str], None] = print,
    rank: bool = True,
) -> Path:
    """A gte-onnx model folder for the ONNX files of the local folder `source`, each variant measured against
    the source's fp32 file; with `rank`, their CPU speed is recorded so variant="auto" picks by speed among
    those that pass their gate (as for a converted model)."""
    from gte_onnx.quantize.fidelity import measure_imported

    out = Path(out_dir)
    manifest = import_onnx_files(source, out, variants=variants, model_id=model_id, revision=revision)
    manifest = measure_imported(out, manifest, data_sets, log)
    if rank and any(v.passes_gate() for name, v in manifest.variants.items() if name != "fp32"):
        rank_variants(out, shapes=FIRST_LOAD_SHAPES, record=True, log=log)
    return out


# ---- a repo's own ONNX files ------------------------------------------------------------------------------
def fetch_onnx_files(repo, meta: list[str], graphs: list[str]) -> Path:
    """The metadata files and the graphs, then the external data files each graph names."""
    folder = repo.fetch(meta + graphs, repo.name)
    data = []
    for graph in graphs:
        parent = Path(graph).parent
        data += [(parent / name).as_posix() for name in external_data_files(folder / graph)]
    if data:
        repo.fetch(data, "external data")
    return folder


def fetch_for_import(model: str, variants: str, revision: str | None, offline: bool):
    """(local folder, model id, revision, variant names) with the chosen graphs downloaded."""
    repo = open_source(model, revision, offline)
    available = onnx_variant_files(repo.files)
    if not available:
        raise UnsupportedModelError(f"{repo.name} holds no ONNX files in the transformers.js or optimum layout")
    names = list(available) if variants == "all" else [v.strip() for v in variants.split(",") if v.strip()]
    for name in names:
        variants_to_import(available, name, None, repo.name)  # an unknown name fails here, before downloads
    folder = fetch_onnx_files(repo, metadata_files(repo.files), [available[n] for n in names])
    model_id = str(Path(model).resolve()) if isinstance(repo, LocalFolder) else repo.repo_id
    return folder, model_id, repo.revision, names


# ---- gte-onnx import ------------------------------------------------------------------------------------
def import_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="gte-onnx import",
        description="Make a gte-onnx model folder of the ONNX files a hub repo or folder already has "
        "(transformers.js onnx/model*.onnx, optimum model*.onnx), each measured against its fp32 file.",
    )
    parser.add_argument("source", help="hub id (org/name) or local folder")
    parser.add_argument("out", help="new output folder")
    parser.add_argument("--variants", default="all", help="comma-separated variant names, or all (default)")
    parser.add_argument("--revision", default=None)
    parser.add_argument("--offline", action="store_true", help="use only the local hub cache")
    parser.add_argument("--eval", choices=("probe", "full"), default="probe",
                        help="probe: the probe set; full: also STS-B and CISI (embedding models)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise ModelFolderError(f"{out} exists and is not empty; give a new folder")
    folder, model_id, revision, names = fetch_for_import(args.source, args.variants, args.revision, args.offline)
    data_sets = ("sts-b", "cisi") if args.eval == "full" else ()
    import_onnx(folder, out, variants=names, model_id=model_id, revision=revision, data_sets=data_sets)
    print(f"wrote {out}")
    return 0


