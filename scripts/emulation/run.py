"""Run Python under the emulated CPU families that scripts/setup-emulation.sh builds (qemu-user).

    from scripts.emulation import run as emu      # or importlib on this file's path
    fams = emu.families()                          # {} until setup-emulation.sh has run
    site = emu.install_wheel("dist/gte_onnx-0.1.0-py3-none-any.whl")
    out = emu.run_python("arm64-dot", "import gte_onnx, onnxruntime; print(onnxruntime.__version__)",
                         extra_pythonpath=[site])

Families: "x86-avx2" (the host venv under qemu-x86_64 -cpu Haswell: AVX2, no VNNI, no AVX-512), "arm64"
(Debian's python3 under qemu-aarch64 -cpu cortex-a72: NEON, no dot product) and "arm64-dot" (-cpu neoverse-n1:
dot product). Emulated timings mean nothing; the arithmetic is faithful.

The x86 family imports the project from the host venv (editable install). The arm64 families see only the aarch64
wheels in the emu dir plus what the caller passes in extra_pythonpath: install the project's wheel with
install_wheel() and pass the folder it returns.

Fragile points: a process started by the emulated Python (subprocess with sys.executable, multiprocessing with
spawn) runs natively, not emulated, as binfmt_misc is not used; under the arm64 families the guest's /usr, /etc
and /proc/cpuinfo are the emu dir's, every other path is the host's.

No side effects at import.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Mapping, Sequence

# Host variables that would point an emulated interpreter at the host's (x86) packages or settings.
_DROPPED_ENV = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONEXECUTABLE", "PYTHONUSERBASE",
                "QEMU_LD_PREFIX", "QEMU_CPU", "QEMU_GUEST_BASE")


def emu_path(emu_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder setup-emulation.sh builds into ($GTE_ONNX_EMU_DIR or ~/.cache/gte-onnx-emu)."""
    if emu_dir is not None:
        return Path(emu_dir)
    if os.environ.get("GTE_ONNX_EMU_DIR"):
        return Path(os.environ["GTE_ONNX_EMU_DIR"])
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "gte-onnx-emu"


def _manifest(emu_dir_: str | os.PathLike | None) -> dict:
    path = emu_path(emu_dir_) / "families.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}


def families(emu_dir: str | os.PathLike | None = None) -> dict[str, dict]:
    """{family: {"argv", "env", "pythonpath", "machine", "cpu", "note"}} from families.json; {} when the
    emulators are not set up (run scripts/setup-emulation.sh) or a family's interpreter is gone."""
    found = {}
    for name, fam in _manifest(emu_dir).items():
        if not isinstance(fam, dict) or "argv" not in fam:
            continue
        if all(os.path.exists(a) for a in fam["argv"] if a.startswith("/")):
            found[name] = fam
    return found


def command(family: str | Mapping, args: Sequence[str], extra_pythonpath: Sequence[str | os.PathLike] = (),
            env: Mapping[str, str] | None = None, emu_dir: str | os.PathLike | None = None
            ) -> tuple[list[str], dict[str, str]]:
    """The argv and environment that run `python ARGS` under FAMILY (a name or a families() entry)."""
    fam = family if isinstance(family, Mapping) else families(emu_dir).get(family)
    if fam is None:
        known = ", ".join(families(emu_dir)) or "none: run scripts/setup-emulation.sh"
        raise KeyError(f"no emulated family {family!r} (set up: {known})")
    full_env = {k: v for k, v in (os.environ if env is None else env).items() if k not in _DROPPED_ENV}
    full_env.update(fam.get("env", {}))
    full_env["PYTHONNOUSERSITE"] = "1"
    entries = [os.fspath(p) for p in extra_pythonpath] + list(fam.get("pythonpath", []))
    if entries:
        full_env["PYTHONPATH"] = os.pathsep.join(entries)
    else:
        full_env.pop("PYTHONPATH", None)
    return [*fam["argv"], *args], full_env


def run_python(family: str | Mapping, code_or_script_args: str | Sequence[str],
               extra_pythonpath: Sequence[str | os.PathLike] = (), env: Mapping[str, str] | None = None,
               timeout: float | None = 900, cwd: str | os.PathLike | None = None, check: bool = False,
               emu_dir: str | os.PathLike | None = None) -> subprocess.CompletedProcess:
    """Run Python under FAMILY and capture its output (text).

    code_or_script_args: a str is code (`python -c CODE`); a sequence is python's arguments
    (["script.py", "arg"], ["-m", "module"]). env replaces os.environ as the base environment (the family's own
    variables and PYTHONPATH = extra_pythonpath + the family's site folder are set on top of it)."""
    args = ["-c", code_or_script_args] if isinstance(code_or_script_args, str) else list(code_or_script_args)
    argv, full_env = command(family, args, extra_pythonpath, env, emu_dir)
    return subprocess.run(argv, env=full_env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          check=check)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def install_wheel(wheel_path: str | os.PathLike, emu_dir: str | os.PathLike | None = None,
                  host_python: str | None = None) -> Path:
    """Unpack a pure-Python wheel (the project's own) for the arm64 families; returns the folder to pass in
    extra_pythonpath. Installed once per wheel content (emu dir/wheels/<sha256 prefix>-<name>) with the host's
    pip (--no-deps --target) and reused afterwards."""
    wheel = Path(wheel_path).resolve()
    if not wheel.name.endswith("-none-any.whl"):
        raise ValueError(f"{wheel.name}: only pure-Python (none-any) wheels can be installed for every family")
    root = emu_path(emu_dir) / "wheels"
    target = root / f"{_sha256(wheel)[:16]}-{wheel.name[:-len('.whl')]}"
    marker = target / ".gte-onnx-wheel"
    if marker.exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{target.name}.{os.getpid()}.tmp"
    python = host_python or _manifest(emu_dir).get("host_python") or sys.executable
    try:
        subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input",
                        "--no-deps", "--no-compile", "--target", str(tmp), str(wheel)],
                       check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as e:
        if zipfile.is_zipfile(wheel):  # no pip: a wheel is a zip that unpacks into site-packages as is
            shutil.rmtree(tmp, ignore_errors=True)
            with zipfile.ZipFile(wheel) as z:
                z.extractall(tmp)
        else:
            raise RuntimeError(f"pip could not install {wheel}:\n{e.stderr}") from e
    (tmp / ".gte-onnx-wheel").write_text(wheel.name + "\n")
    try:
        os.rename(tmp, target)
    except OSError:  # another process got there first
        if not marker.exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return target
