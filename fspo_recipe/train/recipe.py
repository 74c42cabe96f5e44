"""The loader behind ``fairseq2 lm preference_finetune``: fairseq2's own, with this plugin's additions for FSPO runs.

For ``criterion.name=fspo`` it

1. activates the workarounds of fairseq2 0.4.6 defects that training needs (several CPU processes), before fairseq2
   creates the process group (:func:`fspo_recipe.fairseq2_compat.activate_fspo_workarounds`);
2. loads the policy and the reference with the llama/mistral factories that implement the packed-pairs interface
   (:func:`fspo_recipe.models.families.packed_model_families`);
3. turns a model, tokenizer or data file that cannot be found into a one-line :class:`FspoLoadError`;
4. records the card directories the run was started with (:func:`fspo_recipe.runs.record_card_directories`), so
   that exporting or evaluating it later needs no environment variable;
5. checks the checkpoint a resumed run starts from (:func:`fspo_recipe.train.checkpoints.check_resume_checkpoint`:
   no code in a pickle runs, a damaged file is named with the step to resume from instead), and drops the metrics
   lines of the steps the resumed run redoes (:func:`fspo_recipe.train.checkpoints.forget_redone_metrics`).

Every other criterion (dpo, simpo, ... of fairseq2) gets fairseq2's loader untouched.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fairseq2.context import RuntimeContext
from fairseq2.logging import log
from fairseq2.utils.env import get_rank

from fspo_recipe.assets import describe_load_error, load_error_types
from fspo_recipe.fairseq2_compat import activate_fspo_workarounds
from fspo_recipe.models.families import packed_model_families
from fspo_recipe.runs import record_card_directories
from fspo_recipe.train.checkpoints import check_model_file, check_resume_checkpoint, forget_redone_metrics, step_dirs
from fspo_recipe.train.unit import FSPO_UNIT


class FspoLoadError(ValueError):
    """A model, tokenizer or data set of an FSPO run cannot be found or loaded; printed as one line."""


def load_preference_finetuner(context: RuntimeContext, config: object, output_dir: Path) -> Any:
    """The recipe loader of ``fairseq2 lm preference_finetune`` (see the module docstring)."""
    from fairseq2.recipes.lm import load_po_finetuner

    if criterion_name(config) != FSPO_UNIT:
        return load_po_finetuner(context, config, output_dir)
    resume_step = check_resume_checkpoint(output_dir)
    if get_rank(os.environ) == 0:
        dropped = forget_redone_metrics(output_dir, resume_step)
        if dropped:
            log.info("Resuming at step {}: dropped {} metrics line(s) of the steps it redoes.", (resume_step or 0) + 1,
                     dropped)
    base = _flat(config).get("common.assets.checkpoint_dir")
    if base:  # the run starts from another run's last step (`last_checkpoint@`)
        steps = step_dirs(Path(str(base)))
        if steps and (steps[-1][1] / "model.pt").is_file():
            check_model_file(steps[-1][1] / "model.pt")
    if get_rank(os.environ) == 0:
        record_card_directories(output_dir, _flat(config).get("common.assets.extra_path"),
                                Path(str(base)).parent if base else None)
    activate_fspo_workarounds()
    try:
        with packed_model_families(context):
            return load_po_finetuner(context, config, output_dir)
    except load_error_types() as ex:
        raise FspoLoadError(describe_load_error(ex)) from ex


def is_fspo_config(config: object) -> bool:
    """Whether a preference-finetuning configuration trains with the FSPO unit (``criterion.name=fspo``)."""
    return criterion_name(config) == FSPO_UNIT


# Keys that must be whole numbers >= 1 when set (None: not used), and numbers that must not be negative.
_AT_LEAST_ONE = ("dataset.batch_size", "dataset.max_num_tokens", "dataset.max_seq_len", "dataset.min_seq_len",
                 "trainer.gradient_accumulation", "regime.num_steps", "regime.num_data_epochs",
                 "regime.checkpoint_every_n_steps", "regime.publish_metrics_every_n_steps",
                 "regime.keep_last_n_checkpoints")
_NOT_NEGATIVE = ("optimizer.config.lr", "optimizer.config.weight_decay", "trainer.max_gradient_norm",
                 "lr_scheduler.config.num_warmup_steps")


def _flat(config: object, prefix: tuple[str, ...] = ()) -> dict[str, object]:
    """``{"a.b.c": value}`` of an unstructured configuration (fairseq2's ``_set_`` levels folded in)."""
    out: dict[str, object] = {}
    if isinstance(config, dict):
        for key, value in config.items():
            path = prefix if key == "_set_" else (*prefix, str(key))
            if isinstance(value, dict):
                out.update(_flat(value, path))
            else:
                out[".".join(path)] = value
    return out


def _number(value: object) -> float | None:
    """A configuration value as a number: YAML and ``--config`` give "nan" or "1e-4" as strings, which fairseq2
    turns into floats later; None for what is not a number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(value) if isinstance(value, str) else None
    except ValueError:
        return None


def card_path_problem(config: object) -> str | None:
    """``common.assets.extra_path`` given several directories, which fairseq2 0.4.6 cannot take (it names no key)."""
    extra = _flat(config).get("common.assets.extra_path")
    if isinstance(extra, (list, tuple)):
        return (f"common.assets.extra_path is {extra}; fairseq2 takes one directory there: give a directory that "
                "holds the others (cards are found in its subdirectories), or name one of them in "
                "FAIRSEQ2_USER_ASSET_DIR.")
    return None


def check_training_config(config: object) -> str | None:
    """The first nonsense value of an FSPO training configuration, as one line (None: none found): several card
    directories, a float that is NaN or infinite anywhere, a size or count that is not a whole number >= 1, a
    negative (or NaN) learning rate, weight decay, gradient norm or warm-up."""
    import math

    if (problem := card_path_problem(config)) is not None:
        return problem
    flat = _flat(config)
    for key, value in flat.items():
        if isinstance(value, float) and not math.isfinite(value):
            return f"{key} is {value}; expected a finite number."
    for key in _AT_LEAST_ONE:
        value = flat.get(key)
        number = _number(value)
        if value is not None and (number is None or not math.isfinite(number) or number != int(number) or number < 1):
            return f"{key} is {value!r}; expected a whole number >= 1."
    for key in _NOT_NEGATIVE:
        value = flat.get(key)
        number = _number(value)
        if value is not None and (number is None or not math.isfinite(number) or number < 0):
            return f"{key} is {value!r}; expected a finite number >= 0."
    return None


def criterion_name(config: object) -> str | None:
    """``criterion.name`` of an unstructured (or structured) preference-finetuning configuration."""
    criterion = config.get("criterion") if isinstance(config, dict) else getattr(config, "criterion", None)
    name = criterion.get("name") if isinstance(criterion, dict) else getattr(criterion, "name", None)
    return name if isinstance(name, str) else None
