"""Lay a model folder out as an offline Hugging Face hub cache (models--org--name/refs/main + snapshots/<commit>,
files hard-linked as blobs), so `Embedder("org/name")` with HF_HUB_OFFLINE=1 takes the real download code path.

python fake_hub.py SRC_FOLDER HUB_CACHE org/name   -> prints the commit hash
"""
import hashlib
import os
import sys
from pathlib import Path

src, root, repo_id = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
commit = hashlib.sha1(repo_id.encode()).hexdigest()
repo = root / ("models--" + repo_id.replace("/", "--"))
for path in src.rglob("*"):
    if not path.is_file():
        continue
    name = path.relative_to(src).as_posix()
    blob = repo / "blobs" / hashlib.sha256((name + str(path.stat().st_size)).encode()).hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    os.link(path.resolve(), blob)
    link = repo / "snapshots" / commit / name
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(blob, link.parent))
(repo / "refs").mkdir(parents=True, exist_ok=True)
(repo / "refs" / "main").write_text(commit)
print(commit)
