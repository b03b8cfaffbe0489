"""A progress bar for long jobs: tqdm when installed, otherwise one rewritten stderr line."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, desc: str, enabled: bool, unit: str = "text", leave: bool = True):
        self.total, self.desc, self.enabled = total, desc, enabled
        self.done = 0
        self._bar = None
        self._note = ""
        self._start = time.perf_counter()
        if enabled:
            try:
                from tqdm import tqdm

                self._bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=leave)
            except ImportError:
                pass

    def update(self, n: int = 1) -> None:
        if not self.enabled:
            return
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        else:
            self._line()

    def note(self, text: str) -> None:
        """What is running now, shown after the count."""
        if not self.enabled:
            return
        self._note = text
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=True)
        else:
            self._line()

    def _line(self) -> None:
        rate = self.done / max(time.perf_counter() - self._start, 1e-9)
        eta = f", ETA {(self.total - self.done) / rate:.0f} s" if 0 < rate and self.done < self.total else ""
        sys.stderr.write(f"\r{self.desc}: {self.done}/{self.total} ({rate:.1f}/s{eta}) {self._note:<48.48}")
        sys.stderr.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        else:
            sys.stderr.write("\n")


def auto_enabled(show: bool | None, n_items: int, threshold: int = 512) -> bool:
    """None means: show it on long jobs when a person is watching."""
    if show is not None:
        return bool(show)
    return n_items >= threshold and sys.stderr.isatty()
