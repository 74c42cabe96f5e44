"""The criterion API: what a preference loss receives, returns, and how it is found by name."""

from __future__ import annotations

import dataclasses
import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, final

from torch import Tensor


class CriterionError(ValueError):
    """A criterion name or hyper-parameter is invalid; the message says which and what is expected."""


@final
@dataclass(frozen=True)
class PairLogps:
    """Sequence log-probabilities of one batch of preference pairs.

    Every tensor has shape [batch]. Log-probs are in nats, summed over the response tokens (the prompt never
    counts). ``ref_*`` are ``None`` when the run has no reference model and the data carries no reference scores;
    criteria that need them raise :class:`CriterionError` then.
    """

    policy_chosen: Tensor
    """Summed log-prob of the chosen response under the policy."""

    policy_rejected: Tensor
    """Summed log-prob of the rejected response under the policy."""

    ref_chosen: Tensor | None
    """Summed log-prob of the chosen response under the reference, or ``None``."""

    ref_rejected: Tensor | None
    """Summed log-prob of the rejected response under the reference, or ``None``."""

    chosen_lengths: Tensor
    """Number of response tokens of the chosen response (float, for length normalization)."""

    rejected_lengths: Tensor
    """Number of response tokens of the rejected response."""

    def log_ratios(self) -> tuple[Tensor, Tensor]:
        """Return (chosen, rejected) policy/reference log-ratios, each [batch], in nats.

        :raises CriterionError: if the pair has no reference log-probs.
        """
        if self.ref_chosen is None or self.ref_rejected is None:
            raise CriterionError(
                "This criterion needs reference log-probs, but the run has neither a reference model nor "
                "`reference_score_chosen`/`reference_score_rejected` in the data. Name a reference model with "
                "--config 'criterion.config.reference_model={name: MODEL}', score the data with "
                "fspo-score-reference, or use a reference-free criterion (simpo, sft, dpo with reference_free=true)."
            )
        return self.policy_chosen - self.ref_chosen, self.policy_rejected - self.ref_rejected


@dataclass(kw_only=True)
class CriterionConfig:
    """Base of every criterion's hyper-parameters. Subclasses add fields, each with a one-line docstring."""

    def validate(self) -> None:
        """Raise :class:`CriterionError` on an out-of-range value. Subclasses extend it."""


ConfigT = TypeVar("ConfigT", bound=CriterionConfig)


class PreferenceCriterion(ABC):
    """A preference loss over a batch of pairs.

    A subclass is registered with :func:`register_criterion` and built from its config dataclass. ``loss`` returns
    the per-pair loss [batch] (the unit sums it and fairseq2 normalizes over pairs, accumulation steps and ranks).
    ``rewards`` gives the implicit rewards that the unit logs as accuracy and margin; the default is the DPO reward
    ``beta * log(pi/ref)`` when the config has ``beta`` and reference log-probs exist, else the policy log-probs.
    """

    def __init__(self, config: CriterionConfig) -> None:
        config.validate()
        self.config = config

    @property
    def needs_reference(self) -> bool:
        """Whether ``loss`` reads reference log-probs; when False the unit loads no reference model."""
        return True

    @abstractmethod
    def loss(self, logps: PairLogps) -> Tensor:
        """Return the per-pair loss, shape [batch], in nats."""

    def rewards(self, logps: PairLogps) -> tuple[Tensor, Tensor]:
        """Return the implicit (chosen, rejected) rewards, each [batch]; detached by the caller."""
        beta = getattr(self.config, "beta", 1.0)
        if logps.ref_chosen is not None and logps.ref_rejected is not None:
            chosen, rejected = logps.log_ratios()
        else:
            chosen, rejected = logps.policy_chosen, logps.policy_rejected
        return beta * chosen, beta * rejected


@final
@dataclass(frozen=True)
class _Entry:
    kls: type[PreferenceCriterion]
    config_kls: type[CriterionConfig]


_REGISTRY: dict[str, _Entry] = {}

CriterionT = TypeVar("CriterionT", bound=type[PreferenceCriterion])


def register_criterion(name: str, config_kls: type[CriterionConfig]) -> Callable[[CriterionT], CriterionT]:
    """Class decorator: make a :class:`PreferenceCriterion` selectable as ``criterion.config.loss=<name>``.

    Registering the same class twice under one name is a no-op (modules may be imported twice); registering a
    different class under a taken name raises :class:`CriterionError`.
    """

    def decorate(kls: CriterionT) -> CriterionT:
        if not (isinstance(kls, type) and issubclass(kls, PreferenceCriterion)):
            raise CriterionError(f"@register_criterion('{name}') must decorate a PreferenceCriterion subclass.")
        if not (dataclasses.is_dataclass(config_kls) and issubclass(config_kls, CriterionConfig)):
            raise CriterionError(f"The config of criterion '{name}' must be a CriterionConfig dataclass.")
        old = _REGISTRY.get(name)
        if old is not None and f"{old.kls.__module__}.{old.kls.__qualname__}" != f"{kls.__module__}.{kls.__qualname__}":
            raise CriterionError(
                f"A criterion named '{name}' is already registered ({old.kls.__module__}.{old.kls.__qualname__}); "
                "choose another name."
            )
        _REGISTRY[name] = _Entry(kls, config_kls)
        return kls

    return decorate


def criterion_names() -> list[str]:
    """Return the registered criterion names, sorted."""
    return sorted(_REGISTRY)


def resolve_criterion_name(name: str) -> str:
    """Turn ``name`` or ``module.path:name`` into a registered name, importing the module first if given.

    The ``module:name`` form is how a criterion in a user's own module is selected with one override:
    ``--config criterion.config.loss=my_losses:hinge``.
    """
    module, sep, short = name.rpartition(":")
    if sep:
        try:
            importlib.import_module(module)
        except ImportError as ex:
            raise CriterionError(
                f"Criterion '{name}': cannot import module '{module}' ({ex}). The module must be importable "
                "(on PYTHONPATH or installed)."
            ) from ex
        name = short
    if name not in _REGISTRY:
        hint = " (its module defines no @register_criterion with that name)" if sep else ""
        raise CriterionError(
            f"Unknown criterion '{name}'{hint}. Known criteria: {', '.join(criterion_names())}. "
            "A criterion in your own module is selected as 'my.module:name'."
        )
    return name


def get_criterion_entry(name: str) -> tuple[type[PreferenceCriterion], type[CriterionConfig]]:
    """Return (criterion class, config class) for ``name`` (``module:name`` accepted)."""
    entry = _REGISTRY[resolve_criterion_name(name)]
    return entry.kls, entry.config_kls


def make_criterion_config(name: str, params: Mapping[str, Any] | None = None) -> CriterionConfig:
    """Build and validate the config of criterion ``name`` from a mapping of hyper-parameters."""
    _, config_kls = get_criterion_entry(name)
    params = dict(params or {})
    known = {f.name for f in dataclasses.fields(config_kls)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise CriterionError(
            f"Criterion '{name}' has no hyper-parameter {', '.join(map(repr, unknown))}; "
            f"its hyper-parameters are: {', '.join(sorted(known)) or '(none)'}."
        )
    try:
        config = config_kls(**params)
    except TypeError as ex:
        raise CriterionError(f"Criterion '{name}': {ex}") from ex
    config.validate()
    return config


def default_loss_params() -> dict[str, dict[str, Any]]:
    """Every registered criterion's hyper-parameters at their defaults, by name: the ``loss_params`` of the presets
    (training and evaluation), so that ``criterion.config.loss=<name>`` alone switches the loss. The defaults live in
    each criterion's config class, nowhere else."""
    return {name: dataclasses.asdict(_REGISTRY[name].config_kls()) for name in criterion_names()}


def get_criterion(name: str, **params: Any) -> PreferenceCriterion:
    """Build the criterion registered as ``name`` (``module:name`` accepted) with hyper-parameters ``params``.

    >>> get_criterion("ipo", beta=0.01)
    """
    kls, _ = get_criterion_entry(name)
    return kls(make_criterion_config(name, params))


@dataclass(kw_only=True)
class CriterionChoice:
    """A criterion chosen by name with hyper-parameters per name: the ``criterion.config`` of training (which adds
    more fields) and the ``criterion`` section of evaluation."""

    loss: str = "ipo"
    """The preference criterion: a registered name (dpo, ipo, simpo, sft, ...) or ``my.module:name``."""

    loss_params: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    """Hyper-parameters per criterion name; only the entry of ``loss`` is used, so switching ``loss`` is one
    override (``loss_params.dpo.beta=0.1`` sets one). Missing entries take the defaults."""

    def validate(self) -> None:
        name = resolve_criterion_name(self.loss)
        known = set(criterion_names())
        for key, params in self.loss_params.items():
            if key in (name, self.loss):
                make_criterion_config(self.loss, params)
            elif key in known:
                make_criterion_config(key, params)  # catch bad values in entries kept for later switches
            # Other keys belong to criteria of modules this run does not import; they are kept as they are.

    def build_criterion(self) -> PreferenceCriterion:
        """Build the selected criterion with its entry of ``loss_params``."""
        name = resolve_criterion_name(self.loss)
        return get_criterion(name, **self.loss_params.get(self.loss, self.loss_params.get(name, {})))


def check_same_vocabulary(policy_vocab: object, reference_vocab: object, policy_name: str,
                          reference_name: str) -> None:
    """Raise :class:`CriterionError` when the policy's and the reference's vocabularies (VocabularyInfo) differ.

    The implicit reward subtracts the two models' log-probs of the same token ids, which only means something
    when both models use one tokenizer.
    """
    if policy_vocab is not None and reference_vocab is not None and policy_vocab != reference_vocab:
        raise CriterionError(
            f"The reference model '{reference_name}' has a different vocabulary from the policy '{policy_name}': "
            f"{reference_vocab} vs {policy_vocab}. The reference must use the policy's tokenizer (normally it is "
            "the SFT model the policy starts from)."
        )
