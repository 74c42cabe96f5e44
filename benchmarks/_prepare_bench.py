"""What the fspo-prepare benchmarks share: write synthetic columns to a parquet file, run `fspo-prepare` on it in a
child process, time it, and clean up."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def work_dir(keep: Path | None) -> Iterator[Path]:
    """``keep`` (kept afterwards), or a temporary directory removed afterwards."""
    work = keep or Path(tempfile.mkdtemp(prefix="fspo-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        yield work
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)


def run_prepare(work: Path, source: str, make_columns: Callable[[], dict[str, list]], extra: Sequence[str],
                describe: str) -> tuple[subprocess.CompletedProcess, float]:
    """Write ``make_columns()`` as WORK/train-00000-of-00001.parquet, then time `fspo-prepare SOURCE` on it (output
    WORK/out); returns the finished process and its wall time in seconds."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = work / "train-00000-of-00001.parquet"
    t = time.perf_counter()
    pq.write_table(pa.table(make_columns()), src)
    print(f"input: {describe}, {src.stat().st_size / 1e6:.0f} MB parquet (made in {time.perf_counter() - t:.1f} s)")
    cmd = [sys.executable, "-m", "fspo_recipe.data.prepare", source, "--input", str(src), "--out", str(work / "out"),
           "--no-progress", "--quiet", *extra]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        print(proc.stdout, proc.stderr, file=sys.stderr)
    return proc, wall
