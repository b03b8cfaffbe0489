"""The air-gapped GPU host check (dev/gpu-host-check/) kept from rotting on a machine without a GPU.

- the fat binary pruning and the payload round trip, on a synthetic ELF library and wheel;
- the fail-soft stage runner;
- the whole check as a CPU dry run (tiny model, CPU execution provider): every stage must pass, the parity
  figures and the timing cells must be there.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KIT = ROOT / "dev" / "gpu-host-check"
sys.path.insert(0, str(KIT))

import fatbin
import payload
from checkkit import Failed, Run, Settings, Skip


# ---- a synthetic CUDA library -----------------------------------------------------------------------
def _image(kind: int, arch: int, payload_bytes: bytes) -> bytes:
    header = bytearray(64)
    struct.pack_into("<HHIQ", header, 0, kind, 0x0101, 64, len(payload_bytes))
    struct.pack_into("<I", header, 28, arch)
    return bytes(header) + payload_bytes


def _container(images: list[bytes]) -> bytes:
    body = b"".join(images)
    return struct.pack("<IHHQ", fatbin.FATBIN_MAGIC, 1, 16, len(body)) + body


def _elf(section: bytes) -> bytes:
    """A minimal little-endian ELF64 file with .shstrtab and .nv_fatbin sections."""
    names = b"\0.shstrtab\0.nv_fatbin\0"
    str_off = 64
    fat_off = (str_off + len(names) + 7) // 8 * 8
    sh_off = (fat_off + len(section) + 7) // 8 * 8
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    header = ident + struct.pack("<HHIQQQIHHHHHH", 3, 62, 1, 0, 0, sh_off, 0, 64, 0, 0, 64, 3, 1)

    def sh(name, offset, size):
        return struct.pack("<IIQQQQIIQQ", name, 1, 0, 0, offset, size, 0, 0, 8, 0)

    out = bytearray(header)
    out += names + bytes(fat_off - str_off - len(names))
    out += section + bytes(sh_off - fat_off - len(section))
    out += bytes(64) + sh(1, str_off, len(names)) + sh(11, fat_off, len(section))
    return bytes(out)


def _library() -> tuple[bytes, dict[str, bytes]]:
    payloads = {name: os.urandom(n) for name, n in
                (("a75", 40), ("a80", 48), ("a90", 56), ("a120", 24), ("b90", 32), ("c120", 16), ("d80", 8), ("d90", 64), ("dptx", 20))}
    section = b"".join([
        _container([_image(2, 75, payloads["a75"]), _image(2, 80, payloads["a80"]),
                    _image(2, 90, payloads["a90"]), _image(2, 120, payloads["a120"])]),
        _container([_image(2, 90, payloads["b90"])]),
        _container([_image(2, 120, payloads["c120"])]),  # no sm_90 image: must stay as it is
        bytes(8),  # alignment padding between containers
        _container([_image(2, 80, payloads["d80"]), _image(2, 90, payloads["d90"]), _image(1, 80, payloads["dptx"])]),
    ])
    return _elf(section), payloads


def test_prune_keeps_only_the_gpu_arch_and_every_container_address():
    data, payloads = _library()
    pruned, stats = fatbin.prune_library(data, keep_arch=90)
    assert len(pruned) == len(data)
    assert stats["pruned_containers"] == 2 and stats["containers_without_arch"] == 1
    assert stats["images_dropped"] == 4  # a75, a80, a120, d80
    offset, size = fatbin.elf_section(pruned, ".nv_fatbin")
    before = fatbin.parse_section(data, offset, size)
    after = fatbin.parse_section(pruned, offset, size)
    assert [c.start for c in after] == [c.start for c in before]
    kept = [[(i.kind, i.arch) for i in c.images] for c in after]
    assert kept == [[(2, 90)], [(2, 90)], [(2, 120)], [(2, 90), (1, 80)]]
    first = after[0].images[0]
    assert pruned[first.start + 64 : first.start + first.size] == payloads["a90"]
    assert pruned[after[3].images[1].start + 64 : after[3].end] == payloads["dptx"]
    assert not any(pruned[after[0].end : before[0].end])  # freed bytes are zero
    assert fatbin.arch_summary(pruned) == {"elf_sm90": 3 * 64 + 56 + 32 + 64, "elf_sm120": 64 + 16, "ptx_sm80": 64 + 20}


def test_prune_refuses_a_library_it_does_not_understand():
    data, _ = _library()
    offset, _size = fatbin.elf_section(data, ".nv_fatbin")
    broken = bytearray(data)
    broken[offset : offset + 4] = b"\x01\x02\x03\x04"
    with pytest.raises(fatbin.FatbinError, match="no fat binary magic"):
        fatbin.prune_library(bytes(broken), 90)
    with pytest.raises(fatbin.FatbinError, match="not a little-endian 64-bit ELF"):
        fatbin.prune_library(b"MZ" + bytes(100), 90)
    with pytest.raises(fatbin.FatbinError, match="no .nv_missing section"):
        fatbin.elf_section(data, ".nv_missing")


# ---- the payload round trip -------------------------------------------------------------------------
def _wheel(path: Path, library: bytes) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(payload.CUDA_LIBRARY, library)
        z.writestr("onnxruntime/__init__.py", "__version__ = '0.0'\n")
        z.writestr("onnxruntime_gpu-0.0.dist-info/RECORD",
                   f"{payload.CUDA_LIBRARY},{payload._record_hash(library)},{len(library)}\n"
                   "onnxruntime/__init__.py,,\nonnxruntime_gpu-0.0.dist-info/RECORD,,\n")
    return path


def test_payload_parts_travel_upload_by_upload_and_unpack_verified(tmp_path):
    library, _ = _library()
    library += os.urandom(6000)  # incompressible bytes, so the payload needs several parts
    wheel = _wheel(tmp_path / "onnxruntime_gpu-0.0-cp312-cp312-manylinux_2_28_x86_64.whl", library)
    out = tmp_path / "gpu-host-payload" / "slim"
    manifest = payload.build(wheel, out, "slim", keep_arch=90, part_size=2048)
    assert len(manifest["parts"]) >= 3 and manifest["prune"]["images_dropped"] == 4
    assert payload.build(wheel, out, "slim", keep_arch=90, part_size=2048) == manifest  # up to date: reused
    finer = payload.build(wheel, out, "slim", keep_arch=90, part_size=1024)  # re-cut, not recompressed
    assert finer["xz_sha256"] == manifest["xz_sha256"] and len(finer["parts"]) > len(manifest["parts"])
    manifest = payload.build(wheel, out, "slim", keep_arch=90, part_size=2048, reuse_limit=1024)
    assert max(p["bytes"] for p in manifest["parts"]) == 1024  # fits the limit: kept as it is
    manifest = payload.build(wheel, out, "slim", keep_arch=90, part_size=2048)

    state = tmp_path / "state"
    for n, part in enumerate(manifest["parts"], start=1):  # each upload carries one part
        carried = tmp_path / f"upload{n}" / "gpu-host-payload" / "slim"
        carried.mkdir(parents=True)
        (carried / payload.MANIFEST).write_bytes((out / payload.MANIFEST).read_bytes())
        (carried / part["name"]).write_bytes((out / part["name"]).read_bytes())
        assert payload.stash(carried.parent, state) == [f"slim/{part['name']}"]
        if n < len(manifest["parts"]):
            with pytest.raises(payload.PayloadError, match="incomplete"):
                payload.unpack(state / "slim", tmp_path / "wheel")
    unpacked = payload.unpack(state / "slim", tmp_path / "wheel")
    with zipfile.ZipFile(unpacked) as z:
        slim = z.read(payload.CUDA_LIBRARY)
        record = z.read("onnxruntime_gpu-0.0.dist-info/RECORD").decode()
        assert all(i.compress_type == zipfile.ZIP_STORED for i in z.infolist())
    assert set(fatbin.arch_summary(slim)) == {"elf_sm90", "elf_sm120", "ptx_sm80"}
    assert f"{payload.CUDA_LIBRARY},{payload._record_hash(slim)},{len(slim)}" in record

    (state / "slim" / manifest["parts"][0]["name"]).write_bytes(b"corrupt")
    (tmp_path / "wheel" / unpacked.name).unlink()
    with pytest.raises(payload.PayloadError, match="corrupt"):
        payload.unpack(state / "slim", tmp_path / "wheel")


def test_plan_carries_one_part_per_upload_and_runs_the_check_last(tmp_path, monkeypatch):
    folder = tmp_path / "gpu-host-payload" / "slim"
    folder.mkdir(parents=True)
    parts = [{"name": f"part-{i}", "bytes": 50 << 20, "sha256": "0"} for i in (1, 2, 3)]
    (folder / payload.MANIFEST).write_text(json.dumps({"flavour": "slim", "parts": parts}))
    uploads = payload.plan(folder, root=tmp_path)
    assert [c["files"] for c in uploads] == [["gpu-host-payload/slim/payload.json", f"gpu-host-payload/slim/part-{i}"] for i in (1, 2, 3)]
    assert "--phases stash,prep" in uploads[0]["command"] and "--phases stash" in uploads[1]["command"]
    assert "--phases" not in uploads[2]["command"]
    assert all(c["timeout_s"] <= 600 for c in uploads)


# ---- the stage runner -------------------------------------------------------------------------------
def test_a_failing_stage_never_stops_the_next(tmp_path, capsys):
    run = Run("prep", Settings(state=str(tmp_path)))

    def boom(_run):
        raise ValueError("bad thing")

    def verdict(_run):
        raise Failed("gate missed", {"figure": 1.5})

    run.stage("boom", boom)
    run.stage("needs_boom", lambda r: r.need("boom"))
    run.stage("verdict", verdict)
    run.stage("fine", lambda r: ({"x": 1}, "note"))
    assert [(s.name, s.status) for s in run.stages] == [
        ("boom", "failed"), ("needs_boom", "skipped"), ("verdict", "failed"), ("fine", "ok")]
    assert run.stages[0].error == "ValueError: bad thing"
    saved = json.loads(run.save().read_text())
    assert saved["data"] == {"verdict": {"figure": 1.5}, "fine": {"x": 1}}
    assert "Traceback" in capsys.readouterr().out  # the unexpected error's traceback is in the log


def test_skip_is_not_a_failure():
    run = Run("ort", Settings())

    def skipper(_run):
        raise Skip("no GPU")

    run.stage("s", skipper)
    assert run.stages[0].status == "skipped" and run.stages[0].note == "no GPU"


# ---- the whole check, dry --------------------------------------------------------------------------
def test_cpu_dry_run_passes_every_stage(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable)
    start = time.perf_counter()
    done = subprocess.run(["bash", str(KIT / "gpu_check.sh"), "--cpu-dry-run", "--state", str(tmp_path / "state")],
                          capture_output=True, text=True, env=env, timeout=300)
    seconds = time.perf_counter() - start
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "== all stages ok" in done.stdout
    report = json.loads((out / "gpu_check.json").read_text())
    results = report["results"]
    statuses = {(p, s["name"]): s["status"] for p, r in results.items() for s in r["stages"]}
    assert statuses[("ort", "preload_cuda")] == "skipped"
    assert all(v == "ok" for k, v in statuses.items() if k != ("ort", "preload_cuda")), statuses
    ort = results["ort"]["data"]
    assert "needs onnxruntime-gpu" in ort["provider_errors"]["cpu_wheel_asked_for_cuda"]
    tokens = ort["parity_tokens"]
    assert tokens["fp32"]["passed"] and tokens["fp32"]["max_abs_diff"] <= 1e-4
    assert tokens["fp16"]["finite_at_300"] and tokens["fp16"]["relative_error"] < 0.05
    assert ort["parity_embeddings"]["fp16"]["gate"]["passed"]
    cells = {**results["prep"]["data"]["torch_bench"]["cells"], **ort["ort_bench"]["cells"]}
    for row in ("torch fp32", "torch bf16", "ort fp32 run", "ort fp32 bound", "ort fp16 run", "ort fp16 bound"):
        assert all(cells[row][shape]["median_ms"] > 0 for shape in ("4x32", "2x128", "1x300")), (row, cells[row])
    table = (out / "gpu_check.txt").read_text()
    assert "== parity vs PyTorch fp32" in table and "== speed on cpu" in table
    print(f"dry run: {seconds:.1f} s")
