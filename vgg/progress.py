"""Progress of a loop for a person watching it: tqdm's bar on a terminal, else a plain line
at every tenth done, so that a cluster job's log file or a pipe holds readable lines, never
a bar's carriage returns. Training, validation, evaluate.py and predict.py all report
through this."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from tqdm import tqdm

PLAIN_LINES = 10  # a plain line each time another tenth of the items is done


def plain_progress(progress: bool) -> bool:
    """Whether progress goes out as plain lines instead of a tqdm bar: when asked
    (``--progress false``), or when stdout or stderr (the bar's) is no terminal (a cluster
    job's log file, a pipe), where a bar is noise."""
    return not (progress and sys.stdout.isatty() and sys.stderr.isatty())


class Progress:
    """Counts ``total`` items (``update(n)``) under the name ``desc``: a tqdm bar (on stderr)
    when ``bar``, else a plain line on ``file`` (stdout by default) each time another tenth
    is done; nothing at all when not ``show`` (the processes other than the main one). The
    keyword arguments of :meth:`update` are shown beside the count (``top1_err=0.25``)."""

    def __init__(self, total: int, desc: str, *, show: bool = True, bar: bool = True,
                 unit: str = "img", file: TextIO | None = None, leave: bool = True):
        self.total, self.desc, self.unit, self.file = total, desc, unit, file
        self.lines = show and not bar
        self.done, self.tenths = 0, 0
        self.started = time.monotonic()
        self.bar = tqdm(total=total, desc=desc, unit=unit, disable=not (show and bar),
                        dynamic_ncols=True, leave=leave)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.close()

    def update(self, n: int, **shown: Any) -> None:
        self.done += n
        if shown:
            self.bar.set_postfix(shown, refresh=False)
        self.bar.update(n)
        tenths = min(PLAIN_LINES, self.done * PLAIN_LINES // self.total) if self.total else 0
        if self.lines and tenths > self.tenths:
            self.tenths = tenths
            print(self.line(shown), file=self.file or sys.stdout, flush=True)

    def line(self, shown: dict[str, Any]) -> str:
        """``validation: 500/1000 img (50%) | top1_err 0.250 | 120 img/s``"""
        seconds = time.monotonic() - self.started
        rate = f" | {self.done / seconds:.0f} {self.unit}/s" if seconds > 0 else ""
        return (f"{self.desc}: {self.done}/{self.total} {self.unit} "
                f"({self.done / self.total:.0%})"
                + "".join(f" | {key} {value}" for key, value in shown.items()) + rate)
