"""The one base class of every error a user can cause and fix (a bad flag, a missing file, a
checkpoint of another network): both command-line tools catch it once and print its message
as one paragraph, exit code 2, no traceback. Anything else is a bug and keeps its traceback."""

from __future__ import annotations

import reprlib
import sys
from collections.abc import Callable


class UserError(Exception):
    """Input a user has to fix; the message says what was wrong and what to do."""


def run_cli(main: Callable[[], int], program: str) -> int:
    """``main()``'s exit code, or 2 after printing a :class:`UserError` as ``program: error:
    <message>`` on stderr."""
    try:
        return main()
    except UserError as error:
        print(f"{program}: error: {error}", file=sys.stderr)
        return 2


# Values read from a file go into messages through this: a list that holds itself nine
# levels deep (a YAML alias bomb, a crafted checkpoint) has a repr() of 9^9 items, so an
# uncapped one hangs the very error that reports it.
_CAPPED = reprlib.Repr()
_CAPPED.maxlevel, _CAPPED.maxstring, _CAPPED.maxother, _CAPPED.maxlong = 3, 80, 80, 40
_CAPPED.maxdict = _CAPPED.maxlist = _CAPPED.maxtuple = _CAPPED.maxset = 6


def short_repr(value: object) -> str:
    """``repr(value)`` capped in depth, items and length (``[1, 2, ...]``): cheap and short
    for any value, however large or self-sharing."""
    return _CAPPED.repr(value)
