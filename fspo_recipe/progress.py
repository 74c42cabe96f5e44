"""The progress bar of the plugin's commands."""

from __future__ import annotations

import sys
from collections.abc import Callable


class ProgressBar:
    """A rich progress bar (or nothing: when disabled or stderr is not a terminal), as a context manager yielding
    ``tick(n, description=None)``: advance by n, and replace the label when a description is given."""

    def __init__(self, enabled: bool, label: str, total: int) -> None:
        self._bar = None
        if enabled and sys.stderr.isatty():
            from rich.progress import Progress

            self._bar = Progress(transient=True)
            self._task = self._bar.add_task(label, total=total)

    def __enter__(self) -> Callable[..., None]:
        if self._bar is not None:
            self._bar.start()
        return self._tick

    def _tick(self, n: int, description: str | None = None) -> None:
        if self._bar is not None:
            self._bar.update(self._task, advance=n, **({} if description is None else {"description": description}))

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
