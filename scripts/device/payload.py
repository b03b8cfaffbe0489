"""The onnxruntime-gpu wheel as a payload that fits the device tool's 64 MiB per call.

Here (CPU machine), `build` turns the downloaded wheel into parts:
  slim  the CUDA provider library keeps only the GPU's own cubins (fatbin.py), every zip entry stored,
        then xz: about 65 MiB, two parts;
  full  the unmodified wheel contents, stored, then xz: about 190 MiB, four parts (the fallback if the
        slim library cannot launch a kernel).
There (device), `stash` copies each call's carried part out of the checkout into the state folder, and
`unpack` joins the parts, checks every sha256 and writes the wheel. `plan` prints the device calls.

    python scripts/device/payload.py build WHEEL --flavour slim --out device-payload/slim
    python scripts/device/payload.py plan device-payload/slim
    python scripts/device/payload.py stash device-payload /tmp/gte-device/payload     (device)
    python scripts/device/payload.py unpack /tmp/gte-device/payload/slim /tmp/gte-device/wheel  (device)
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import lzma
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fatbin import prune_library

MANIFEST = "payload.json"
MIB = 1 << 20
CALL_LIMIT = 64 * MIB  # the device tool's limit on what one call carries, working tree included
HEADROOM = 3 * MIB  # for files that appear in the tree between prepare and the calls
CUDA_LIBRARY = "onnxruntime/capi/libonnxruntime_providers_cuda.so"
ROOT = Path(__file__).resolve().parents[2]


class PayloadError(RuntimeError):
    pass


def sha256(path_or_bytes) -> str:
    h = hashlib.sha256()
    if isinstance(path_or_bytes, (bytes, bytearray)):
        h.update(path_or_bytes)
    else:
        with open(path_or_bytes, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


# ---- build (here) -----------------------------------------------------------------------------------
def rewrite_wheel(src: Path, dst: Path, keep_arch: int | None) -> dict:
    """Copy the wheel with every entry stored (xz compresses stored bytes far better than deflated ones);
    with keep_arch, prune the CUDA library's cubins and fix its line in RECORD so the wheel stays valid."""
    stats: dict = {}
    with zipfile.ZipFile(src) as zin:
        names = zin.namelist()
        record = next((n for n in names if n.endswith(".dist-info/RECORD")), None)
        if record is None:
            raise PayloadError(f"{src.name} has no RECORD: not a wheel")
        replaced: dict[str, bytes] = {}
        if keep_arch is not None:
            if CUDA_LIBRARY not in names:
                raise PayloadError(f"{src.name} has no {CUDA_LIBRARY}: not an onnxruntime-gpu wheel")
            data, stats = prune_library(zin.read(CUDA_LIBRARY), keep_arch)
            replaced[CUDA_LIBRARY] = data
        lines = []
        for line in zin.read(record).decode().splitlines():
            path = line.split(",", 1)[0]
            if path in replaced:
                line = f"{path},{_record_hash(replaced[path])},{len(replaced[path])}"
            lines.append(line)
        replaced[record] = ("\n".join(lines) + "\n").encode()
        with zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_STORED) as zout:
            for info in zin.infolist():
                data = replaced.get(info.filename)
                if data is None:
                    data = zin.read(info.filename)
                entry = zipfile.ZipInfo(info.filename, date_time=info.date_time)
                entry.external_attr = info.external_attr
                zout.writestr(entry, data)
    return stats


def xz_compress(src: Path, dst: Path) -> None:
    if shutil.which("xz"):
        with open(dst, "wb") as out:
            subprocess.run(["xz", "-T0", "-6", "-c", str(src)], stdout=out, check=True)
    else:
        with open(src, "rb") as fin, lzma.open(dst, "wb", preset=6) as fout:
            shutil.copyfileobj(fin, fout, 1 << 22)


def tree_bytes(root: Path = ROOT) -> int:
    """What travels with every call besides the carried paths: tracked and untracked-not-ignored files."""
    listed = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, check=True).stdout.split(b"\0")
    total = 0
    for name in filter(None, listed):
        path = root / name.decode()
        if path.is_file():
            total += path.stat().st_size
    shared = root / "shared"
    if shared.is_dir():
        total += sum(p.stat().st_size for p in shared.rglob("*") if p.is_file())
    return total


def part_size_for(tree: int) -> int:
    """Parts of a new split: what a call has left beside the tree, less room for the tree to grow."""
    size = CALL_LIMIT - tree - HEADROOM - 64 * 1024  # payload.json travels too
    if size < 8 * MIB:
        raise PayloadError(f"the working tree already takes {tree / MIB:.1f} MiB of the 64 MiB a call may carry")
    return min(size, 56 * MIB)


def largest_fitting_part(tree: int) -> int:
    """The largest existing part that still travels with this tree (1 MiB spare): reused as it is."""
    return CALL_LIMIT - tree - MIB - 64 * 1024


def _same_build(out: Path, wheel: Path, flavour: str, keep_arch: int) -> dict | None:
    """The manifest of an earlier build of this wheel and flavour whose parts are all there."""
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    same = (manifest.get("flavour") == flavour and manifest.get("source_wheel_sha256") == sha256(wheel)
            and manifest.get("keep_arch") == (keep_arch if flavour == "slim" else None))
    present = all((out / p["name"]).is_file() for p in manifest.get("parts", []))
    return manifest if same and present else None


def _split(packed: Path, out: Path, part_size: int) -> list[dict]:
    parts = []
    with open(packed, "rb") as fh:
        for n, block in enumerate(iter(lambda: fh.read(part_size), b""), start=1):
            name = f"part-{n}"
            (out / name).write_bytes(block)
            parts.append({"name": name, "bytes": len(block), "sha256": sha256(block)})
    return parts


def build(wheel: Path, out: Path, flavour: str, keep_arch: int, part_size: int, reuse_limit: int | None = None) -> dict:
    """Write out/part-N and out/payload.json. An earlier build of the same wheel is reused when its parts
    are at most reuse_limit bytes (default part_size), and re-split without recompressing otherwise."""
    out.mkdir(parents=True, exist_ok=True)
    packed = out / "wheel.xz.tmp"
    stored = out / "wheel.tmp"
    earlier = _same_build(out, wheel, flavour, keep_arch)
    try:
        if earlier is not None:
            if max(p["bytes"] for p in earlier["parts"]) <= (reuse_limit or part_size):
                return earlier
            with open(packed, "wb") as fh:  # same xz stream, new cut: seconds instead of minutes of xz
                for p in earlier["parts"]:
                    fh.write((out / p["name"]).read_bytes())
            if sha256(packed) != earlier["xz_sha256"]:
                raise PayloadError(f"the parts in {out} do not join to their recorded sha256: delete {out} and rerun")
            manifest = {k: v for k, v in earlier.items() if k != "parts"}
        else:
            stats = rewrite_wheel(wheel, stored, keep_arch if flavour == "slim" else None)
            manifest = {"flavour": flavour, "wheel": wheel.name, "wheel_sha256": sha256(stored),
                        "keep_arch": keep_arch if flavour == "slim" else None, "prune": stats,
                        "source_wheel_sha256": sha256(wheel)}
            xz_compress(stored, packed)
            stored.unlink()
            manifest["xz_sha256"] = sha256(packed)
        for old in list(out.glob("part-*")) + [out / MANIFEST]:
            old.unlink(missing_ok=True)
        manifest["parts"] = _split(packed, out, part_size)
    finally:
        stored.unlink(missing_ok=True)
        packed.unlink(missing_ok=True)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


# ---- device side ------------------------------------------------------------------------------------
def stash(carried: Path, dest: Path) -> list[str]:
    """Copy every part this call carried (checked against its payload.json) to dest/<flavour>/."""
    copied = []
    for manifest_path in sorted(Path(carried).glob(f"*/{MANIFEST}")):
        manifest = json.loads(manifest_path.read_text())
        target = Path(dest) / manifest["flavour"]
        target.mkdir(parents=True, exist_ok=True)
        old = target / MANIFEST
        if old.is_file() and json.loads(old.read_text())["xz_sha256"] != manifest["xz_sha256"]:
            for stale in target.glob("part-*"):  # parts of another build: useless with this one
                stale.unlink()
        shutil.copyfile(manifest_path, old)
        for part in manifest["parts"]:
            src = manifest_path.parent / part["name"]
            if src.is_file() and not (target / part["name"]).is_file():
                if sha256(src) != part["sha256"]:
                    raise PayloadError(f"{src} does not match its sha256 in {manifest_path}: re-run prepare.sh")
                shutil.copyfile(src, target / part["name"])
                copied.append(f"{manifest['flavour']}/{part['name']}")
    return copied


def missing_parts(folder: Path) -> list[str]:
    manifest_path = Path(folder) / MANIFEST
    if not manifest_path.is_file():
        return [MANIFEST]
    manifest = json.loads(manifest_path.read_text())
    return [p["name"] for p in manifest["parts"] if not (Path(folder) / p["name"]).is_file()]


def unpack(folder: Path, wheel_dir: Path) -> Path:
    """Join, verify and decompress the parts into wheel_dir/<wheel name>; reuses a verified earlier result."""
    folder, wheel_dir = Path(folder), Path(wheel_dir)
    missing = missing_parts(folder)
    if missing:
        raise PayloadError(f"payload in {folder} is incomplete, missing {missing}: a call that carries them was "
                           "skipped, or the machine was replaced between calls (start again from call 1)")
    manifest = json.loads((folder / MANIFEST).read_text())
    wheel = wheel_dir / manifest["wheel"]
    if wheel.is_file() and sha256(wheel) == manifest["wheel_sha256"]:
        return wheel
    wheel_dir.mkdir(parents=True, exist_ok=True)
    joined = wheel_dir / "wheel.xz"
    with open(joined, "wb") as out:
        for part in manifest["parts"]:
            data = (folder / part["name"]).read_bytes()
            if sha256(data) != part["sha256"]:
                raise PayloadError(f"{folder / part['name']} is corrupt (sha256 mismatch)")
            out.write(data)
    if sha256(joined) != manifest["xz_sha256"]:
        raise PayloadError("the joined payload does not match its sha256")
    with lzma.open(joined, "rb") as fin, open(wheel, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 22)
    joined.unlink()
    if sha256(wheel) != manifest["wheel_sha256"]:
        raise PayloadError(f"{wheel} does not match its sha256 after decompression")
    return wheel


# ---- the call sequence ------------------------------------------------------------------------------
def plan(folder: Path, root: Path = ROOT) -> list[dict]:
    """The device `run` calls, in order: the first also runs the PyTorch phase, the last the whole check."""
    folder = Path(folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    rel = folder.resolve().relative_to(root.resolve())
    flavour = manifest["flavour"]
    n = len(manifest["parts"])
    calls = []
    for i, part in enumerate(manifest["parts"], start=1):
        carry = [str(rel / MANIFEST), str(rel / part["name"])]
        # The script's own deadline sits under the call's timeout, so its report always comes back.
        # Two 7-minute caps fit the 15 device minutes with the machine's start; expected runs are ~4 and ~3.
        if i == n:
            phases, timeout = "all", 420
        elif i == 1:
            phases, timeout = "stash,prep", 420
        else:
            phases, timeout = "stash", 90
        command = f"bash scripts/device/gpu_check.sh --payload {flavour} --deadline {timeout - 25}"
        if phases != "all":
            command += f" --phases {phases}"
        calls.append({"call": i, "carry": carry, "command": command, "timeout_s": timeout,
                      "carried_mib": round(part["bytes"] / MIB, 1)})
    return calls


def format_plan(calls: list[dict], tree: int) -> str:
    lines = [f"Device calls ({len(calls)}; working tree {tree / MIB:.1f} MiB travels with each). Make them back to "
             "back: a machine idle for 30 s is given back, and with it the parts already carried.",
             "If a later call prints 'payload ... incomplete', the machine was replaced: start again from call 1."]
    for c in calls:
        lines.append(f"  call {c['call']}: run(command={c['command']!r}, carry={json.dumps(c['carry'])}, "
                     f"timeout_s={c['timeout_s']})   # carries {c['carried_mib']} MiB")
    lines.append("Then give_back. The table is at the end of the last call's output; gpu_check.json and the log come back in files.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="payload.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("wheel", type=Path)
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--flavour", choices=("slim", "full"), default="slim")
    b.add_argument("--keep-arch", type=int, default=90, help="SM architecture kept by the slim flavour (90: H100/H200)")
    b.add_argument("--part-mib", type=float, default=None, help="default: what the working tree leaves of 64 MiB")
    p = sub.add_parser("plan")
    p.add_argument("folder", type=Path)
    p.add_argument("--json", action="store_true")
    s = sub.add_parser("stash")
    s.add_argument("carried", type=Path)
    s.add_argument("dest", type=Path)
    u = sub.add_parser("unpack")
    u.add_argument("folder", type=Path)
    u.add_argument("wheel_dir", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.cmd == "build":
            tree = tree_bytes()
            size = int(args.part_mib * MIB) if args.part_mib else part_size_for(tree)
            manifest = build(args.wheel, args.out, args.flavour, args.keep_arch, size,
                             reuse_limit=None if args.part_mib else largest_fitting_part(tree))
            total = sum(p["bytes"] for p in manifest["parts"])
            print(f"{args.flavour}: {len(manifest['parts'])} part(s), {total / MIB:.1f} MiB in all "
                  f"(parts <= {size / MIB:.1f} MiB; tree {tree / MIB:.1f} MiB); prune: {manifest['prune'] or 'none'}")
        elif args.cmd == "plan":
            calls = plan(args.folder)
            print(json.dumps(calls, indent=2) if args.json else format_plan(calls, tree_bytes()))
        elif args.cmd == "stash":
            copied = stash(args.carried, args.dest)
            print(f"stashed {copied or 'nothing new'} in {args.dest}")
        elif args.cmd == "unpack":
            print(unpack(args.folder, args.wheel_dir))
    except (PayloadError, OSError, ValueError) as exc:
        print(f"payload.py {args.cmd}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
