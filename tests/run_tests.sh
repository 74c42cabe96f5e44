#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs libsndfile1 (apt) and the project into .venv if needed,
# then runs pytest. Extra arguments go to pytest, e.g. `bash tests/run_tests.sh -k criteria`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export FSPO_INSTALL_APT="${FSPO_INSTALL_APT:-1}"
source "$ROOT/setup_env.sh" || exit 1
cd "$ROOT"

# Two workers (the machine has two cores; most tests wait on subprocesses); the torchrun tests share one group.
# One thread per process unless set: two workers, each with its fairseq2 subprocesses, share the two cores, and torch's
# default (a thread per core in every process) oversubscribes them.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec python -m pytest -q -p no:cacheprovider --durations=10 --timeout=900 -n 2 --dist loadgroup tests "$@"
