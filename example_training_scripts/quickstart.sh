#!/usr/bin/env bash
# Quick start: FSPO on CPU, offline, in a few minutes. Sets up a virtualenv on first use (see setup_env.sh), then
# runs quickstart.py (see its docstring): synthetic users, fspo-prepare, fspo_sft, fspo_ipo from the SFT checkpoint,
# and preference_eval on held-out users with and without their shot; it ends with the held-out accuracy table.
#
#   bash example_training_scripts/quickstart.sh [OUT_DIR]      (default OUT_DIR: quickstart_out)
#
# OUT_DIR/sft, OUT_DIR/ipo and OUT_DIR/eval are started afresh on every call.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$(realpath -m "${1:-$ROOT/quickstart_out}")"

source "$ROOT/setup_env.sh" || exit 1
cd "$ROOT"
exec python example_training_scripts/quickstart.py --out "$OUT"
