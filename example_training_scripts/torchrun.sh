#!/usr/bin/env bash
# One node, several processes (GPUs, or CPU processes over gloo): `fairseq2 lm preference_finetune` under torchrun.
#
#   bash example_training_scripts/torchrun.sh                # train
#   DRY_RUN=1 bash example_training_scripts/torchrun.sh      # print the command, run nothing
#   NPROC=4 OUT_DIR=runs/ipo_3b bash example_training_scripts/torchrun.sh
#
# Run it from the repository root in the environment of `pip install -e .`. Starting it again with the same
# OUT_DIR resumes from the last checkpoint (after a crash or a pre-emption).
set -euo pipefail

# ---- set these (each can also come from the environment) -------------------------------------------------
NPROC="${NPROC:-8}"                                            # processes on this node: one per GPU
OUT_DIR="${OUT_DIR:-runs/ipo_3b}"                              # the run directory (checkpoints, metrics, logs)
PRESET="${PRESET:-fspo_ipo}"                                   # fspo_sft | fspo_ipo | fspo_dpo
CONFIG_FILE="${CONFIG_FILE-example_configurations/fsdp_3b.yaml}"  # a YAML of example_configurations/, "" for none
OVERRIDES="${OVERRIDES:-}"                                     # more --config overrides, space-separated (a=b c=d)
TORCHRUN="${TORCHRUN:-torchrun}"                               # the torchrun of the environment
DRY_RUN="${DRY_RUN:-0}"                                        # 1: print the command only
# ------------------------------------------------------------------------------------------------------------

source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

read -r -a overrides <<<"$OVERRIDES"
fspo_recipe_args "$OUT_DIR" "$PRESET" "$CONFIG_FILE" "${overrides[@]}"
fspo_run "$TORCHRUN" --standalone --nproc-per-node "$NPROC" "$(fspo_fairseq2)" "${FSPO_ARGS[@]}"
