"""Preference criteria: the extension point users write against.

A criterion is a config dataclass plus a :class:`PreferenceCriterion` subclass with a ``loss`` method, registered
with :func:`register_criterion`. See docs/writing_a_criterion.md.
"""

from fspo_recipe.criteria._base import (
    CriterionChoice as CriterionChoice,
    CriterionConfig as CriterionConfig,
    CriterionError as CriterionError,
    PairLogps as PairLogps,
    PreferenceCriterion as PreferenceCriterion,
    check_same_vocabulary as check_same_vocabulary,
    criterion_names as criterion_names,
    default_loss_params as default_loss_params,
    get_criterion as get_criterion,
    get_criterion_entry as get_criterion_entry,
    make_criterion_config as make_criterion_config,
    register_criterion as register_criterion,
    resolve_criterion_name as resolve_criterion_name,
)
from fspo_recipe.criteria.builtin import (
    DpoConfig as DpoConfig,
    DpoCriterion as DpoCriterion,
    IpoConfig as IpoConfig,
    IpoCriterion as IpoCriterion,
    RpoConfig as RpoConfig,
    RpoCriterion as RpoCriterion,
    SftConfig as SftConfig,
    SftCriterion as SftCriterion,
    SimpoConfig as SimpoConfig,
    SimpoCriterion as SimpoCriterion,
    chosen_nll as chosen_nll,
)
