"""The one base class of every error a user can cause and fix (a bad flag, a missing file, a
checkpoint of another network): both command-line tools catch it once and print its message
as one paragraph, exit code 2, no traceback. Anything else is a bug and keeps its traceback."""

from __future__ import annotations

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
