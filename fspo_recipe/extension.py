"""Everything this plugin registers with fairseq2, in one place.

fairseq2 calls :func:`setup_fspo` through the ``fairseq2.extension`` entry point at the end of
``setup_fairseq2()``. Every registration checks ``has`` first, so running it twice is harmless.
"""

from __future__ import annotations

from pathlib import Path

from fairseq2.context import RuntimeContext
from fairseq2.datasets import DatasetHandler, StandardDatasetHandler
from fairseq2.metrics import MetricDescriptor, format_as_float
from fairseq2.optim import OptimizerHandler
from fairseq2.recipes.lm import POFinetuneUnitHandler

from fspo_recipe.assets import add_card_directory
from fspo_recipe.criteria import CriterionError
from fspo_recipe.data.jsonl import PreferenceDataError
from fspo_recipe.eval.config import PREFERENCE_EVAL, EvalError, PreferenceEvalConfig, register_eval_presets
from fspo_recipe.eval.recipe import load_preference_evaluator
from fspo_recipe.fairseq2_compat import FspoRecipeCommandHandler, has_command, replace_recipe_command
from fspo_recipe.models.hf_tokenizer import HF_TOKENIZER_FAMILY, HfTokenizerHandler
from fspo_recipe.models.families import register_families
from fspo_recipe.runs import RunDirError
from fspo_recipe.train.checkpoints import CheckpointCheckError
from fspo_recipe.train.metrics import UNIT_METRICS
from fspo_recipe.train.optim import RMSPROP_OPTIMIZER, RMSpropHandler
from fspo_recipe.train.presets import register_fspo_presets
from fspo_recipe.train.reader import FSPO_PREFERENCE_FAMILY, EmptyPassError, FspoPreferenceDataset
from fspo_recipe.train.recipe import (FspoLoadError, card_path_problem, check_training_config, is_fspo_config,
                                      load_preference_finetuner)
from fspo_recipe.train.unit import FSPO_UNIT, FspoFinetuneUnitHandler, TrainingDivergedError


def setup_fspo(context: RuntimeContext) -> None:
    """Register the FSPO unit, the fspo_preference reader, rmsprop, the metric names and the ``fspo_*`` presets.

    Registration only: no fairseq2 behaviour changes here. The workarounds of fairseq2 defects and the packed-pairs
    model classes are switched on by the FSPO training loader (:mod:`fspo_recipe.train.recipe`) for FSPO runs.
    """
    units = context.get_registry(POFinetuneUnitHandler)
    if not units.has(FSPO_UNIT):
        units.register(FSPO_UNIT, FspoFinetuneUnitHandler(context))

    optimizers = context.get_registry(OptimizerHandler)
    if not optimizers.has(RMSPROP_OPTIMIZER):
        optimizers.register(RMSPROP_OPTIMIZER, RMSpropHandler())

    datasets = context.get_registry(DatasetHandler)
    if not datasets.has(FSPO_PREFERENCE_FAMILY):
        handler = StandardDatasetHandler(
            FSPO_PREFERENCE_FAMILY,
            FspoPreferenceDataset,
            FspoPreferenceDataset.from_path,
            context.file_system,
            context.asset_download_manager,
        )
        datasets.register(FSPO_PREFERENCE_FAMILY, handler)

    descriptors = context.get_registry(MetricDescriptor)
    for name, display_name, priority in UNIT_METRICS:  # names fairseq2 already knows are left to it
        if not descriptors.has(name):
            descriptors.register(name, MetricDescriptor(name, display_name, priority, format_as_float))

    register_fspo_presets(context)

    from fairseq2.data.text.tokenizers import TextTokenizerHandler

    register_families(context)  # the families new to fairseq2 (qwen3); fairseq2's are left as they are
    register_package_cards(context)  # qwen3_0.6b ... qwen3_8b (+ _base): Hugging Face hub models by name
    tokenizers = context.get_registry(TextTokenizerHandler)
    if not tokenizers.has(HF_TOKENIZER_FAMILY):
        tokenizers.register(HF_TOKENIZER_FAMILY, HfTokenizerHandler(context.asset_download_manager))

    register_eval_presets(context)

    register_checkout_asset_cards(context)


def setup_fspo_cli(context: RuntimeContext, cli: object) -> None:
    """The ``fairseq2.cli`` entry point: ``fairseq2 lm preference_eval``, and our loader behind
    ``fairseq2 lm preference_finetune`` (fairseq2's own for other criteria; see :mod:`fspo_recipe.recipe`)."""
    # Print these as one-line errors (no traceback): they say what to change. fairseq2 matches the exact type.
    for kls in (EvalError, CriterionError, PreferenceDataError, EmptyPassError, TrainingDivergedError, FspoLoadError,
                CheckpointCheckError, RunDirError):
        cli.register_user_error_type(kls)  # type: ignore[attr-defined]

    # FSPO runs only: other criteria keep fairseq2's behaviour (no lock, no checks of ours).
    replace_recipe_command(cli, "lm", "preference_finetune", load_preference_finetuner, lock_when=is_fspo_config,
                           check_config=check_training_config)
    if not has_command(cli, "lm", PREFERENCE_EVAL):
        handler = FspoRecipeCommandHandler(
            loader=load_preference_evaluator, config_kls=PreferenceEvalConfig, default_preset="fspo_eval",
            command=f"fairseq2 lm {PREFERENCE_EVAL}", check_config=card_path_problem,
        )
        cli.get_group("lm").add_command(  # type: ignore[attr-defined]
            PREFERENCE_EVAL, handler, help="evaluate personalization on held-out users (fspo)"
        )


# The cards of the bundled samples live beside the package in a source checkout (`pip install -e .`).
CHECKOUT_ASSET_CARDS = Path(__file__).resolve().parent.parent / "asset_cards"


def register_checkout_asset_cards(context: RuntimeContext, cards: Path = CHECKOUT_ASSET_CARDS) -> None:
    """Make the source checkout's ``asset_cards/`` (e.g. ``fspo_sample``) known by name; a no-op elsewhere.

    They are added as fairseq2's own (non-user) cards, so a user's card of the same name wins.
    """
    key = (id(context.asset_store), cards)
    if not cards.is_dir() or key in _REGISTERED_CARD_DIRS:
        return
    add_card_directory(context, cards, user=False)
    _REGISTERED_CARD_DIRS.add(key)


_REGISTERED_CARD_DIRS: set[tuple[int, Path]] = set()


def register_package_cards(context: RuntimeContext, package: str = "fspo_recipe.cards") -> None:
    """The cards shipped inside the package (installed or editable), as fairseq2's own cards (idempotent)."""
    from fairseq2.setup import register_package_metadata_provider

    key = (id(context.asset_store), Path(package))
    if key in _REGISTERED_CARD_DIRS:
        return
    register_package_metadata_provider(context, package)
    _REGISTERED_CARD_DIRS.add(key)
