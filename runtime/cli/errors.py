"""How every `gte-onnx` verb reports a failure: one line on stderr and an exit code that says what kind.

    0    success
    1    the command ran and its verdict is negative: a fidelity gate failed, a benchmark cell failed
    2    bad input: argparse usage errors, and every GteOnnxError (a bad model folder, a missing file,
         a missing optional package, an unavailable provider ...), printed as `error: <message>`;
         also an OSError (an unwritable output path, a full disk) and a missing package
    3    internal error: an exception gte-onnx did not expect, printed as
         `error: internal error: <type>: <message> (run with --debug for the traceback)`.
         Not 1, so that a crash is never read as a failed gate.
    130  interrupted (Ctrl-C)
    141  the reader of stdout went away (`gte-onnx embed ... | head`), as a shell reports SIGPIPE

`--debug` (before or after the verb) or GTE_ONNX_DEBUG=1 prints the traceback as well. The policy is one
function, `run_verb`; `gte_onnx.cli.main` sends every verb through it, and `verb_main` wraps a verb's own
main() so that calling it directly (`python -m gte_onnx.bench.cli`, tests) behaves the same.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import traceback
from typing import Callable, Iterator, Sequence

from gte_onnx.errors import GteOnnxError

EXIT_OK, EXIT_VERDICT, EXIT_ERROR, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 0, 1, 2, 3, 130, 141
DEBUG_ENV = "GTE_ONNX_DEBUG"
DEBUG_FLAG = "--debug"
_debug_forced = False  # set by gte_onnx.cli.main while it runs a verb with --debug


def debug_enabled() -> bool:
    return _debug_forced or os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


@contextlib.contextmanager
def debug_mode(enabled: bool) -> Iterator[None]:
    global _debug_forced
    previous, _debug_forced = _debug_forced, _debug_forced or enabled
    try:
        yield
    finally:
        _debug_forced = previous


def take_debug_flag(argv: Sequence[str]) -> tuple[list[str], bool]:
    """argv without `--debug` (anywhere before a `--`), and whether it was there. A text that is literally
    "--debug" can still be passed after `--`, as argparse requires for any text that looks like an option."""
    out, found = [], False
    for i, arg in enumerate(argv):
        if arg == "--":
            return out + list(argv[i:]), found
        if arg == DEBUG_FLAG:
            found = True
        else:
            out.append(arg)
    return out, found


def one_line(text: str) -> str:
    """A message on one line: onnxruntime and tokenizers put newlines and indentation in theirs."""
    return " ".join(text.split()) or "(no message)"


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def report(exc: BaseException, hint: str = "") -> int:
    """Print `exc` per the policy and return the exit code."""
    if debug_enabled():
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    if isinstance(exc, KeyboardInterrupt):
        _say("error: interrupted")
        return EXIT_INTERRUPTED
    if isinstance(exc, GteOnnxError):
        _say(f"error: {one_line(str(exc))}")
        return EXIT_ERROR
    if isinstance(exc, ModuleNotFoundError):
        _say(f"error: a package this command needs is not installed ({one_line(str(exc))})" + hint)
        return EXIT_ERROR
    if isinstance(exc, OSError):
        # the system refused something the user chose (an unwritable output path, a full disk): not a bug
        where = f"{exc.filename}: " if exc.filename is not None else ""
        _say(f"error: {where}{exc.strerror or one_line(str(exc))}")
        return EXIT_ERROR
    _say(
        f"error: internal error: {type(exc).__name__}: {one_line(str(exc))}"
        + ("" if debug_enabled() else f" (run with {DEBUG_FLAG} for the traceback)")
    )
    return EXIT_INTERNAL


def run_verb(func: Callable[[list[str]], int | None], argv: Sequence[str], hint: str = "") -> int:
    """Run one verb's main(argv) under the policy. SystemExit (argparse, an explicit exit) passes through."""
    try:
        return int(func(list(argv)) or 0)
    except BrokenPipeError:
        # the reader went away (`gte-onnx embed ... | head`): nothing to report, and stdout must not be flushed
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except (Exception, KeyboardInterrupt) as exc:
        return report(exc, hint)


def verb_main(func: Callable[[list[str]], int | None]) -> Callable[[Sequence[str] | None], int]:
    """Decorate a verb's main(argv) so that a direct call follows the policy too."""

    @functools.wraps(func)
    def wrapper(argv: Sequence[str] | None = None) -> int:
        args, debug = take_debug_flag(sys.argv[1:] if argv is None else argv)
        with debug_mode(debug):
            return run_verb(func, args)

    return wrapper
