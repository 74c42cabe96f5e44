#!/usr/bin/env bash
# The synthetic-users personalization study on a fresh machine: sets up .venv on first use (setup_env.sh), then
# runs synthetic_study.py (see its docstring): FSPO versus a no-shots baseline on held-out and interpolated users.
#
#   bash example_training_scripts/synthetic_study.sh [--quick] [--out DIR]     (default DIR: synthetic_study_out)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/setup_env.sh" || exit 1
cd "$ROOT"
exec python example_training_scripts/synthetic_study.py "$@"
