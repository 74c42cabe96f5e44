#!/usr/bin/env bash
# The FSPO pipeline in one script: prepare the episodes, stage 1 SFT, stage 2 IPO (or DPO) from the SFT run's
# last checkpoint with the SFT model as the frozen reference, the held-out evaluation, and the paper's evaluation
# loop outside fairseq2: both models exported to Hugging Face directories (fspo-export-hf), their answers for the
# held-out users (fspo-generate: transformers here, or a vLLM/SGLang server), judged against each other (fspo-judge).
#
#   bash example_training_scripts/fspo_pipeline.sh                 # from the repository root
#   DRY_RUN=1 bash example_training_scripts/fspo_pipeline.sh       # print the commands, run nothing
#   LAUNCHER=torchrun NPROC=4 bash example_training_scripts/fspo_pipeline.sh
#
# Run it in the environment of `pip install -e .` (or `source setup_env.sh` first). A stage whose run directory
# already holds its final checkpoint is resumed by fairseq2, which then has nothing left to do; a crashed stage
# resumes from its last checkpoint when the script is started again.
set -euo pipefail

# ---- set these (each can also come from the environment) -------------------------------------------------
RUN_ROOT="${RUN_ROOT:-runs/fspo_elix}"                         # SFT goes to RUN_ROOT/sft, IPO to RUN_ROOT/ipo, ...
PREPARE="${PREPARE:-1}"                                        # 1: run fspo-prepare first; 0: cards exist already
SOURCE="${SOURCE:-elix}"                                       # elix | review | roleplay (fspo-prepare's source)
INPUT="${INPUT:-}"                                             # local files/directory, "" for the hub data set
SHOTS="${SHOTS:-4}"                                            # shots per episode (paper: 4 Elix, 8 Review/Roleplay)
TEST_USERS="${TEST_USERS:-0.1}"                                # held-out test users: a number, or a fraction below 1
ASSETS="${ASSETS:-$RUN_ROOT/data}"                             # card directory: prepared data (+ your model cards)
DATASET="${DATASET:-${SOURCE}_train}"                          # training card; held-out split: ${SOURCE}_test
EVAL_DATASET="${EVAL_DATASET:-${SOURCE}_test}"                 # evaluation card, "" to skip the evaluation
MODEL="${MODEL:-llama3_2_3b_instruct}"                         # the model SFT starts from (asset card name)
STAGE2="${STAGE2:-fspo_ipo}"                                   # fspo_ipo | fspo_dpo
SFT_CONFIG_FILE="${SFT_CONFIG_FILE-}"                          # a YAML of example_configurations/ for SFT, or ""
STAGE2_CONFIG_FILE="${STAGE2_CONFIG_FILE-}"                    # the same for stage 2
SFT_OVERRIDES="${SFT_OVERRIDES:-}"                             # more SFT --config overrides (a=b c=d)
STAGE2_OVERRIDES="${STAGE2_OVERRIDES:-}"                       # more stage 2 --config overrides
LAUNCHER="${LAUNCHER:-local}"                                  # local (one process) | torchrun (NPROC processes)
NPROC="${NPROC:-8}"                                            # torchrun: processes (GPUs) on this node
TORCHRUN="${TORCHRUN:-torchrun}"
EXPORT="${EXPORT:-1}"                                          # 1: fspo-export-hf both runs (RUN_ROOT/export_*)
GENERATE_BACKEND="${GENERATE_BACKEND-transformers}"            # transformers | openai | "" (no answers, no judge)
GENERATE_URL="${GENERATE_URL:-}"                               # openai: the stage-2 model's server, e.g. vllm serve
GENERATE_URL_SFT="${GENERATE_URL_SFT:-$GENERATE_URL}"          #   RUN_ROOT/export_ipo; the SFT model's server
GENERATE_EXAMPLES="${GENERATE_EXAMPLES:-200}"                  # held-out queries answered, in turn from each user
GENERATE_OPTIONS="${GENERATE_OPTIONS:-}"                       # more fspo-generate options (--chat-template: as trained)
JUDGE="${JUDGE:-}"                                             # chat | exact | "" (no judge); chat needs JUDGE_URL
JUDGE_URL="${JUDGE_URL:-}"                                     # the judge's /v1 address ("" with chat: OpenAI)
JUDGE_MODEL="${JUDGE_MODEL:-}"                                 # the judge model's name
DRY_RUN="${DRY_RUN:-0}"                                        # 1: print the commands only
# ------------------------------------------------------------------------------------------------------------

source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
FAIRSEQ2="$(fspo_fairseq2)"

launch() {  # launch the recipe arguments of FSPO_ARGS with LAUNCHER
    case "$LAUNCHER" in
        local) fspo_run "$FAIRSEQ2" "${FSPO_ARGS[@]}" ;;
        torchrun) fspo_run "$TORCHRUN" --standalone --nproc-per-node "$NPROC" "$FAIRSEQ2" "${FSPO_ARGS[@]}" ;;
        *) echo "error: LAUNCHER must be local or torchrun, not '$LAUNCHER'" >&2; return 2 ;;
    esac
}

if [[ "$PREPARE" == 1 ]]; then
    echo "== stage 0: fspo-prepare $SOURCE -> $ASSETS" >&2
    # --overwrite: a second start of the pipeline re-prepares (the same seed gives the same files); fspo-prepare
    # still refuses to replace anything it did not write.
    prep=(fspo-prepare "$SOURCE" --out "$ASSETS" --shots "$SHOTS" --split-mode heldout_users \
        --test-users "$TEST_USERS" --no-progress --overwrite)
    if [[ -n "$INPUT" ]]; then
        prep+=(--input "$INPUT")
    fi
    fspo_run "${prep[@]}"
fi

# Every split that a stage reads must exist before anything trains: a held-out split that fspo-prepare could not
# make (too few users) must stop the pipeline here, not after hours of training.
require_card() {
    if [[ "$DRY_RUN" != 1 ]] && ! grep -rqsx --include='*.yaml' -e "name: $1" "$ASSETS"; then
        echo "error: no data set card '$1' under $ASSETS; fspo-prepare's summary above says which splits it made" >&2
        exit 1
    fi
}
require_card "$DATASET"
if [[ -n "$EVAL_DATASET" ]]; then
    require_card "$EVAL_DATASET"
fi

echo "== stage 1: fspo_sft -> $RUN_ROOT/sft" >&2
read -r -a sft_overrides <<<"$SFT_OVERRIDES"
fspo_recipe_args "$RUN_ROOT/sft" fspo_sft "$SFT_CONFIG_FILE" common.assets.extra_path="$ASSETS" \
    model.name="$MODEL" dataset.name="$DATASET" "${sft_overrides[@]}"
launch

echo "== stage 2: $STAGE2 from the SFT checkpoint -> $RUN_ROOT/${STAGE2#fspo_}" >&2
read -r -a stage2_overrides <<<"$STAGE2_OVERRIDES"
fspo_recipe_args "$RUN_ROOT/${STAGE2#fspo_}" "$STAGE2" "$STAGE2_CONFIG_FILE" common.assets.extra_path="$ASSETS" \
    common.assets.checkpoint_dir="$RUN_ROOT/sft/checkpoints" dataset.name="$DATASET" "${stage2_overrides[@]}"
launch

if [[ -n "$EVAL_DATASET" ]]; then
    echo "== stage 3: preference_eval on $EVAL_DATASET -> $RUN_ROOT/eval" >&2
    fspo_run "$FAIRSEQ2" lm preference_eval "$RUN_ROOT/eval" --no-sweep-dir --config \
        common.assets.extra_path="$ASSETS" model.run_dir="$RUN_ROOT/${STAGE2#fspo_}" \
        reference.run_dir="$RUN_ROOT/sft" dataset="$EVAL_DATASET"
fi

STAGE2_DIR="$RUN_ROOT/${STAGE2#fspo_}"
if [[ "$EXPORT" == 1 ]]; then
    echo "== stage 4: fspo-export-hf the SFT and the stage-2 runs -> $RUN_ROOT/export_{sft,${STAGE2#fspo_}}" >&2
    # --overwrite replaces only an earlier export (a directory fspo-export-hf wrote).
    fspo_run fspo-export-hf "$RUN_ROOT/sft" "$RUN_ROOT/export_sft" --overwrite
    fspo_run fspo-export-hf "$STAGE2_DIR" "$RUN_ROOT/export_${STAGE2#fspo_}" --overwrite
fi

if [[ -n "$GENERATE_BACKEND" && -n "$EVAL_DATASET" ]]; then
    echo "== stage 5: fspo-generate ($GENERATE_BACKEND) for $EVAL_DATASET -> $RUN_ROOT/answers_{sft,${STAGE2#fspo_}}" >&2
    read -r -a generate_options <<<"$GENERATE_OPTIONS"
    for system in sft "${STAGE2#fspo_}"; do
        gen=(fspo-generate "$RUN_ROOT/answers_$system" --data "$EVAL_DATASET" --assets-dir "$ASSETS" \
            --max-examples "$GENERATE_EXAMPLES" --system "$system" --no-progress "${generate_options[@]}")
        if [[ "$GENERATE_BACKEND" == openai ]]; then
            url="$GENERATE_URL"
            if [[ "$system" == sft ]]; then url="$GENERATE_URL_SFT"; fi
            gen+=(--backend openai --base-url "$url" --model "$RUN_ROOT/export_$system")
        else
            gen+=(--backend transformers --model "$RUN_ROOT/export_$system")
        fi
        fspo_run "${gen[@]}"
    done
    if [[ -n "$JUDGE" ]]; then
        echo "== stage 6: fspo-judge ($JUDGE): ${STAGE2#fspo_} against sft -> $RUN_ROOT/judge" >&2
        judge=(fspo-judge "$RUN_ROOT/judge" --generations "$RUN_ROOT/answers_${STAGE2#fspo_}/generations.jsonl" \
            "$RUN_ROOT/answers_sft/generations.jsonl" --baseline sft --judge "$JUDGE" --no-progress)
        if [[ "$JUDGE" == chat ]]; then
            if [[ -n "$JUDGE_URL" ]]; then judge+=(--base-url "$JUDGE_URL"); fi
            judge+=(--model "$JUDGE_MODEL")
        fi
        fspo_run "${judge[@]}"
    fi
fi
