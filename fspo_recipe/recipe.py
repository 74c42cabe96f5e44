"""The loader behind ``fairseq2 lm preference_finetune``: fairseq2's own, with this plugin's additions for FSPO runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fairseq2.context import RuntimeContext


class FspoLoadError(ValueError):
    """A model, tokenizer or data set of an FSPO run cannot be found or loaded; printed as one line."""


def load_preference_finetuner(context: RuntimeContext, config: object, output_dir: Path) -> Any:
    """fairseq2's ``load_po_finetuner``; for ``criterion.name=fspo`` a missing model, tokenizer or data file is a
    one-line :class:`FspoLoadError` instead of a traceback."""
    from fairseq2.recipes.lm import load_po_finetuner

    from fspo_recipe.assets import describe_load_error, load_error_types
    from fspo_recipe.unit import FSPO_UNIT

    if criterion_name(config) != FSPO_UNIT:
        return load_po_finetuner(context, config, output_dir)
    try:
        return load_po_finetuner(context, config, output_dir)
    except load_error_types() as ex:
        raise FspoLoadError(describe_load_error(ex)) from ex


def criterion_name(config: object) -> str | None:
    """``criterion.name`` of an unstructured (or structured) preference-finetuning configuration."""
    criterion = config.get("criterion") if isinstance(config, dict) else getattr(config, "criterion", None)
    name = criterion.get("name") if isinstance(criterion, dict) else getattr(criterion, "name", None)
    return name if isinstance(name, str) else None
