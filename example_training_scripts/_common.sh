# Sourced by the launch scripts (torchrun.sh, slurm.sbatch, fspo_pipeline.sh); not run on its own.

# Run a command, or print it shell-quoted on one line when DRY_RUN=1.
fspo_run() {
    if [[ "${DRY_RUN:-0}" == 1 ]]; then
        printf '%q ' "$@"
        printf '\n'
    else
        "$@"
    fi
}

# The `fairseq2` executable of the active environment (the one `pip install -e .` installed into).
fspo_fairseq2() {
    if command -v fairseq2 >/dev/null 2>&1; then
        command -v fairseq2
    elif [[ "${DRY_RUN:-0}" == 1 ]]; then
        echo fairseq2
    else
        echo "error: no fairseq2 on PATH; activate the environment of \`pip install -e .\` (or: source setup_env.sh)" >&2
        return 1
    fi
}

# Fill the array FSPO_ARGS with `lm preference_finetune OUT --preset PRESET [--config-file FILE] [--config ...]`.
#   fspo_recipe_args OUT PRESET CONFIG_FILE [OVERRIDE ...]      (CONFIG_FILE "" for none)
fspo_recipe_args() {
    local out="$1" preset="$2" config_file="$3"
    shift 3
    FSPO_ARGS=(lm preference_finetune "$out" --preset "$preset" --no-sweep-dir)
    if [[ -n "$config_file" ]]; then
        FSPO_ARGS+=(--config-file "$config_file")
    fi
    if (($# > 0)); then
        FSPO_ARGS+=(--config "$@")
    fi
}
