"""The progress bar of the plugin's commands."""

from __future__ import annotations

import sys
from collections.abc import Callable


class ProgressBar:
    """A rich progress bar (or nothing: when disabled or stderr is not a terminal), as a context manager yielding
    ``tick(n)``."""

    def __init__(self, enabled: bool, label: str, total: int) -> None:
        self._bar = None
        if enabled and sys.stderr.isatty():
            from rich.progress import Progress

            self._bar = Progress(transient=True)
            self._task = self._bar.add_task(label, total=total)

    def __enter__(self) -> Callable[[int], None]:
        if self._bar is None:
            return lambda n: None
        self._bar.start()
        return lambda n: self._bar.advance(self._task, n)  # type: ignore[union-attr]

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
