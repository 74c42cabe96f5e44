"""Resuming a killed run without duplicated or half-written metric lines.

fairseq2 0.4.6 resumes a run from its last checkpoint when the same command is started again, and appends to
``metrics/<run>.jsonl``. A run killed after its last checkpoint has already written the lines of the steps it is
about to redo, and a kill in the middle of a write leaves a partial last line. :func:`install` patches the JSONL
recorder so that the first line a process writes to a file first rewrites that file (to a temporary file, then
renamed) without the lines of that step and later steps and without lines that are not complete JSON objects.
A fresh run's file does not exist yet, so nothing changes there.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from pathlib import Path

from fspo_recipe.data.writers import atomic_file

_INSTALLED = "_fspo_resume_fix"


def truncate_metrics_file(path: Path, step_nr: int) -> int:
    """Keep the complete lines of ``path`` whose ``Step`` is before ``step_nr`` (or absent); return lines dropped."""
    if not path.is_file():
        return 0
    kept: list[str] = []
    dropped = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1  # cut by a kill mid-write
            continue
        if isinstance(record, dict) and isinstance(record.get("Step"), int) and record["Step"] >= step_nr:
            dropped += 1  # written after the checkpoint the run resumes from; it is about to be redone
            continue
        kept.append(line)
    if dropped:
        with atomic_file(path, "w") as fp:
            fp.writelines(f"{line}\n" for line in kept)
    return dropped


def install() -> None:
    """Patch fairseq2's JsonlMetricRecorder (once): see the module docstring."""
    from fairseq2.logging import log
    from fairseq2.metrics.recorders import JsonlMetricRecorder

    if getattr(JsonlMetricRecorder, _INSTALLED, False):
        return
    original = JsonlMetricRecorder.record_metrics

    @functools.wraps(original)
    def record_metrics(self: JsonlMetricRecorder, run: str, values: Mapping[str, object],
                       step_nr: int | None = None, *, flush: bool = True) -> None:
        name = run.strip()
        if step_nr is not None and name not in self._streams:
            path = self._output_dir.joinpath(name).with_suffix(".jsonl")
            dropped = truncate_metrics_file(path, step_nr)
            if dropped:
                log.info("Resumed at step {}: dropped {} line(s) of step {} or later from {}.", step_nr, dropped,
                         step_nr, path)
        original(self, run, values, step_nr, flush=flush)

    JsonlMetricRecorder.record_metrics = record_metrics  # type: ignore[method-assign]
    setattr(JsonlMetricRecorder, _INSTALLED, True)
