"""The loader behind ``fairseq2 lm preference_finetune``: fairseq2's own, with this plugin's additions for FSPO runs.

For ``criterion.name=fspo`` it

1. activates the workarounds of fairseq2 0.4.6 defects that training needs (several CPU processes; metrics of a
   resumed run), before fairseq2 creates the process group (:func:`fspo_recipe.fairseq2_compat.activate_fspo_workarounds`);
2. loads the policy and the reference with the llama/mistral factories that implement the packed-pairs interface
   (:func:`fspo_recipe.models.llama.packed_model_families`);
3. turns a model, tokenizer or data file that cannot be found into a one-line :class:`FspoLoadError`.

Every other criterion (dpo, simpo, ... of fairseq2) gets fairseq2's loader untouched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fairseq2.context import RuntimeContext


class FspoLoadError(ValueError):
    """A model, tokenizer or data set of an FSPO run cannot be found or loaded; printed as one line."""


def load_preference_finetuner(context: RuntimeContext, config: object, output_dir: Path) -> Any:
    """The recipe loader of ``fairseq2 lm preference_finetune`` (see the module docstring)."""
    from fairseq2.recipes.lm import load_po_finetuner

    from fspo_recipe.assets import describe_load_error, load_error_types
    from fspo_recipe.fairseq2_compat import activate_fspo_workarounds
    from fspo_recipe.models.llama import packed_model_families
    from fspo_recipe.train.unit import FSPO_UNIT

    if criterion_name(config) != FSPO_UNIT:
        return load_po_finetuner(context, config, output_dir)
    activate_fspo_workarounds()
    try:
        with packed_model_families(context):
            return load_po_finetuner(context, config, output_dir)
    except load_error_types() as ex:
        raise FspoLoadError(describe_load_error(ex)) from ex


def criterion_name(config: object) -> str | None:
    """``criterion.name`` of an unstructured (or structured) preference-finetuning configuration."""
    criterion = config.get("criterion") if isinstance(config, dict) else getattr(config, "criterion", None)
    name = criterion.get("name") if isinstance(criterion, dict) else getattr(criterion, "name", None)
    return name if isinstance(name, str) else None
