"""The one error funnel of the plugin's commands: a user's mistake is one line on stderr and an exit code, never a
traceback (an error that is not the user's still gives its traceback)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping

ErrorKinds = type[BaseException] | tuple[type[BaseException], ...]


def run_command(prog: str, body: Callable[[], int], errors: Mapping[ErrorKinds, int],
                describe: Callable[[BaseException], str] = str) -> int:
    """Run ``body`` (which returns the exit code); an exception of a kind in ``errors`` is printed as
    ``PROG: message`` (``describe`` makes the message) and exits with that kind's code (the first kind that matches,
    in the mapping's order)."""
    kinds = tuple(k for key in errors for k in (key if isinstance(key, tuple) else (key,)))
    try:
        return body()
    except kinds as ex:
        print(f"{prog}: {describe(ex)}", file=sys.stderr)
        return next(code for key, code in errors.items() if isinstance(ex, key))
