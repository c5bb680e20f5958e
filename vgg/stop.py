"""Ctrl-C and SIGTERM (a cluster's preemption notice) as a request to stop cleanly: the
trainer finishes the step in progress, writes a checkpoint and exits."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

# What signal.signal accepts and returns as a handler.
Handler = Callable[[int, FrameType | None], Any] | int | None


class StopRequest:
    """While entered, the first SIGINT/SIGTERM only sets :attr:`signum`; the training loop
    polls :attr:`requested` at each step boundary. A second signal stops at once
    (KeyboardInterrupt), except while a checkpoint is written (:meth:`writing`): it then
    waits for that write to finish, so that it never costs the last checkpoint."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, announce: Callable[..., object] = print) -> None:
        self.signum: int | None = None
        self.announce = announce
        self._writing = self._interrupted = False
        self._previous: dict[int, Handler] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        assert self.signum is not None  # only asked for once a signal has arrived
        return signal.Signals(self.signum).name

    def __enter__(self) -> StopRequest:
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc_info) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
            self.announce(f"\n{self.name}: saving a checkpoint at the next step boundary",
                          flush=True)
        elif self._writing:
            self._interrupted = True
        else:
            raise KeyboardInterrupt

    @contextmanager
    def writing(self) -> Iterator[None]:
        """A block (a checkpoint write) that a second signal lets finish first."""
        self._writing = True
        try:
            yield
        finally:
            self._writing = False
        if self._interrupted:
            raise KeyboardInterrupt
