"""The product's files speak of the product and its users, never of how it was developed.

Code, comments, README, pyproject, the maintainer tooling under dev/ and the load tests under load_tests/
must not mention issue numbers, work sessions, the people who wrote them, the machines they borrowed or the
tools they drove. The patterns are precise on purpose: ONNX Runtime's InferenceSession, "session options" or
onnx.helper are product words.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("runtime", "export", "convert", "quantize", "parity", "bench", "dev", "scripts", ".ci", "load_tests",
           "README.md", "pyproject.toml")
# Third-party data shipped as it is (tokenizer vocabularies, evaluation corpora): not our text.
DATA = re.compile(r"^(parity/data/(?!SOURCES\.md$)|export/model_files/.*\.json$)")

I = re.IGNORECASE
FORBIDDEN = [
    # Any "issue" but inside a URL: an upstream bug is cited by its address, never by a tracker's number.
    ("an issue reference", re.compile(r"(?<![/\w])issues?\b(?!/)", I)),
    ("a work session", re.compile(r"\b(this|that|earlier|previous|next|later|last|work|device|development|"
                                  r"helper|lead's|a helper's)\s+sessions?\b", I)),
    ("a work session", re.compile(r"\bsessions?\s+(that is|was|were|is)\s+(lent|given)\b", I)),
    ("a helper (person)", re.compile(r"\bhelpers?\s+h\d+|\bh\d\d[a-z]\b|\b(the|another|other|each|every|this)\s+"
                                     r"helpers?\b(?!\s+(functions?|class(es)?|modules?|methods?|scripts?)\b)", I)),
    ("the lead", re.compile(r"\bthe lead\b(?!\s+(time|to)\b)", I)),
    ("a borrowed machine", re.compile(r"\bborrow(ed|ing)?\b|\blent\b", I)),
    ("the device tool", re.compile(r"\bdevice (tool|calls?|time|minutes?|sessions?)\b", I)),
    ("a task or stop number", re.compile(r"\b(stop|task)\s+#?\d+\b")),  # lower case: "SemEval-2017 Task 1" is a title
    ("a development-machine path", re.compile(r"/work/(\.library|shared|wt|main|locks|fixtures|prompts)\b")),
    ("development jargon", re.compile(r"\b(parity|export|quantize|bench|runtime)\s+rooms?\b|\bevery room's\b", I)),
]


def product_files() -> list[Path]:
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--", *PRODUCT],
                            capture_output=True, check=True).stdout.decode().split("\0")
    return [ROOT / name for name in listed if name and not DATA.match(name) and (ROOT / name).is_file()]


def hits(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return []  # binary files carry no prose
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        for what, pattern in FORBIDDEN:
            match = pattern.search(line)
            if match:
                found.append(f"{path.relative_to(ROOT)}:{number}: {what}: {match.group(0)!r} in {line.strip()[:120]}")
    return found


def test_product_files_speak_only_of_the_product():
    files = product_files()
    assert len(files) > 50, "too few product files: is git ls-files reading this checkout?"
    found = [hit for path in files for hit in hits(path)]
    assert not found, "development-process words in product files:\n" + "\n".join(found)


@pytest.mark.parametrize("line", [
    "# fp32 within 1e-3, as issue 9 asks", "see issue #12", "the export issue's gate", "a session that is lent an H100",
    "run it in the next session", "helper h13c owns this", "the lead merges it", "on the borrowed machine",
    "the device tool carries 64 MiB per call", "stop 4: ship it", "done in task 7", "see /work/shared/notes/x.md",
    "the parity room's gates",
])
def test_the_patterns_catch_process_words(line):
    assert any(p.search(line) for _, p in FORBIDDEN), line


@pytest.mark.parametrize("line", [
    "sess = ort.InferenceSession(path, sess_options)", "session options: intra_op_num_threads",
    "from onnx import helper, numpy_helper", "Graph helpers shared by the recipes", "a helper function for pads",
    "this can lead to NaN", "SemEval-2017 Task 1", "each variant costs one session", "the session the runtime uses",
    "https://github.com/microsoft/onnxruntime/issues/123", "HEADROOM = 3 * MIB", "room for the labels",
    "a CUDA session without preload_dlls()",
])
def test_the_patterns_spare_product_words(line):
    assert not [what for what, p in FORBIDDEN if p.search(line)], line
