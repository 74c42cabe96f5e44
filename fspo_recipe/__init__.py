"""fspo-fairseq2: few-shot preference optimization (FSPO) as a fairseq2 0.4.6 recipe plugin."""

from __future__ import annotations

__version__ = "0.1.0"


def setup_fairseq2_extension(context: object) -> None:
    """The ``fairseq2.extension`` entry point; imports fairseq2 only when fairseq2 calls it."""
    from fspo_recipe.extension import setup_fspo

    setup_fspo(context)  # type: ignore[arg-type]


def setup_fairseq2_cli(context: object, cli: object) -> None:
    """The ``fairseq2.cli`` entry point: adds ``fairseq2 lm preference_eval``."""
    from fspo_recipe.extension import setup_fspo_cli

    setup_fspo_cli(context, cli)  # type: ignore[arg-type]
