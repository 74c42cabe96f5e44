"""benchmarks/shared_prefix.py in the environment of the GPU harness (fairseq2's pure-Python half with a stand-in for
its native half, as the harness runs it), with --against (here the checkout's own HEAD: no old commit needed)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BASELINE = "HEAD"  # --against works with any revision; the checkout's own exists in every clone

# What the GPU harness writes in place of fairseq2n (built for one torch only), plus a trace of each import.
STAND_IN = '''
import os
with open(os.environ["STAND_IN_TRACE"], "a") as trace:
    trace.write(f"{os.getpid()}\\n")
__version__ = "0.4.6"
DOC_MODE = True
def torch_version(): return "2.6.0"
def torch_variant(): return "cpu"
def supports_image(): return False
def supports_cuda(): return False
def cuda_version(): return None
'''


@pytest.mark.slow
def test_the_benchmark_runs_with_the_gpu_harness_stand_in_and_against_a_revision(tmp_path) -> None:
    (tmp_path / "site" / "fairseq2n").mkdir(parents=True)
    (tmp_path / "site" / "fairseq2n" / "__init__.py").write_text(STAND_IN)
    trace = tmp_path / "trace"
    env = dict(os.environ, PYTHONPATH=f"{tmp_path / 'site'}{os.pathsep}{REPO}", STAND_IN_TRACE=str(trace),
               OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(REPO / "benchmarks" / "shared_prefix.py"), "--sizes", "48x8", "--model-dim", "32",
           "--layers", "1", "--heads", "2", "--vocab", "64", "--pairs", "2", "--steps", "1", "--optim",
           "--variants", "shared", "--against", BASELINE]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]

    assert len(trace.read_text().split()) == 2  # every child ran on the stand-in
    assert re.search(r"^\s+48\s+8 shared\s+\d+\.\d\d\s+\d+\.\d\d", proc.stdout, re.M), proc.stdout
    # The baseline's own package ran (from its own worktree), and the variant has a ratio against it.
    assert re.search(rf"\(baseline: {BASELINE}, package \S+fspo_baseline_\S+/tree/fspo_recipe\)", proc.stdout)
    assert len(re.findall(r"^\s+\(baseline\)\s+\d+\.\d\d", proc.stdout, re.M)) == 1, proc.stdout
