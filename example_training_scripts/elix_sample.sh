#!/usr/bin/env bash
# The Elix-sample walk-through: the pipeline on data in the real Elix schema, on CPU, offline, in a few minutes.
# It demonstrates the commands on Llama-style data, not the learning (for that: quickstart.sh). Sets up a
# virtualenv on first use (see setup_env.sh), prepares the bundled Elix-schema sample (datasets/samples/elix) into
# 2-shot episodes with one user held out of training (4 users train, 1 user test), writes a tiny random llama,
# then trains:
#   stage 1  fspo_sft  SFT on the few-shot prompts (chosen and rejected responses as targets, as in the paper)
#   stage 2  fspo_ipo  IPO from the SFT checkpoint, with the SFT model as the frozen reference
#   stage 3  fairseq2 lm preference_eval: the IPO model on the held-out user (reference = SFT),
#            with the shots ablation, JSON/CSV and plots in OUT_DIR/eval
# and prints the final metrics of each stage and the held-out accuracy.
#
#   bash example_training_scripts/elix_sample.sh [OUT_DIR]     (default OUT_DIR: elix_sample_out)
#
# OUT_DIR/sft, OUT_DIR/ipo and OUT_DIR/eval are started afresh on every call (fairseq2 would otherwise resume them).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$(realpath -m "${1:-$ROOT/elix_sample_out}")"
SFT_STEPS="${SFT_STEPS:-}"      # SFT steps; empty: one epoch over the training episodes (78 steps)
IPO_STEPS="${IPO_STEPS:-40}"    # IPO steps

source "$ROOT/setup_env.sh" || exit 1
cd "$ROOT"

start=$(date +%s)
rm -rf "$OUT/sft" "$OUT/ipo" "$OUT/eval"
# 2 shots keep the CPU demo short (the paper uses 4 for Elix: drop --shots for that).
fspo-prepare elix --input datasets/samples/elix --out "$OUT/assets" --shots 2 --split-mode heldout_users \
    --test-users 1 --no-progress --overwrite
fspo-tiny-assets "$OUT/assets" --seed 0

# CPU settings for the tiny model; everything else is the preset's (paper defaults).
CPU=(
    common.assets.extra_path="$OUT/assets"   # the tiny model's card, and elix_train in assets/elix/
    dataset.name=elix_train
    dataset.batch_size=4
    trainer.dtype=float32
    criterion.config.reference_dtype=float32
    lr_scheduler.config.num_warmup_steps=5
    regime.publish_metrics_every_n_steps=10
    regime.checkpoint_every_n_steps=1000
)

echo "== stage 1: fspo_sft"
fairseq2 lm preference_finetune "$OUT/sft" --preset fspo_sft --no-sweep-dir --config "${CPU[@]}" \
    model.name=fspo_tiny_llama optimizer.config.lr=3e-3 regime.num_data_epochs=1 \
    ${SFT_STEPS:+regime.num_steps=$SFT_STEPS regime.checkpoint_every_n_steps=$SFT_STEPS}

echo "== stage 2: fspo_ipo from the SFT checkpoint (reference = the SFT model)"
fairseq2 lm preference_finetune "$OUT/ipo" --preset fspo_ipo --no-sweep-dir --config "${CPU[@]}" \
    common.assets.checkpoint_dir="$OUT/sft/checkpoints" optimizer.config.lr=1e-4 regime.num_steps="$IPO_STEPS" \
    regime.checkpoint_every_n_steps="$IPO_STEPS"

echo "== stage 3: preference_eval on the held-out user (never seen in training)"
fairseq2 lm preference_eval "$OUT/eval" --no-sweep-dir --config common.assets.extra_path="$OUT/assets" \
    model.run_dir="$OUT/ipo" reference.run_dir="$OUT/sft" dataset=elix_test > "$OUT/eval.log"

echo
echo "== final metrics, stage 1 (SFT): $OUT/sft/metrics/train.jsonl"
fspo-metrics "$OUT/sft"
echo
echo "== final metrics, stage 2 (IPO): $OUT/ipo/metrics/train.jsonl"
fspo-metrics "$OUT/ipo"
echo
echo "== held-out evaluation (stage 3): $OUT/eval/metrics.json, per_user.csv, shots.csv, *.png"
tail -n 1 "$OUT/eval.log"
echo
echo "Elix-sample walk-through done in $(( $(date +%s) - start )) s (training and evaluation); checkpoints under $OUT/{sft,ipo}/checkpoints"
