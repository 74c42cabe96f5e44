"""The built-in criteria. Each is a few lines of math over :class:`PairLogps`; see the docstrings for equations."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from fspo_recipe.criteria._base import (
    CriterionConfig,
    CriterionError,
    PairLogps,
    PreferenceCriterion,
    register_criterion,
)


def _check_beta(name: str, beta: float) -> None:
    if not beta > 0.0:
        raise CriterionError(f"Criterion '{name}': beta must be > 0, got {beta}.")


@dataclass(kw_only=True)
class DpoConfig(CriterionConfig):
    beta: float = 0.1
    """Strength of the KL regularization towards the reference (the paper's beta)."""

    label_smoothing: float = 0.0
    """Probability eps that a label is flipped (conservative DPO); 0 is plain DPO. Must be in [0, 0.5)."""

    reference_free: bool = False
    """Treat the reference as uniform (its log-probs as 0): no reference model or scores are needed."""

    def validate(self) -> None:
        _check_beta("dpo", self.beta)
        if not 0.0 <= self.label_smoothing < 0.5:
            raise CriterionError(
                f"Criterion 'dpo': label_smoothing must be in [0, 0.5), got {self.label_smoothing}."
            )


@register_criterion("dpo", DpoConfig)
class DpoCriterion(PreferenceCriterion):
    """Direct Preference Optimization, Rafailov et al. 2023 (arXiv 2305.18290), Eq. 7, with conservative DPO.

    h = (log pi(yw) - log ref(yw)) - (log pi(yl) - log ref(yl)), log-probs summed over response tokens;
    loss = -(1 - eps) * log sigmoid(beta * h) - eps * log sigmoid(-beta * h)   (eps = label_smoothing,
    the conservative DPO of Mitchell 2023 as in the original DPO code's ``preference_loss``).
    """

    config: DpoConfig

    @property
    def needs_reference(self) -> bool:
        return not self.config.reference_free

    def _h(self, logps: PairLogps) -> Tensor:
        if self.config.reference_free:
            return logps.policy_chosen - logps.policy_rejected
        chosen, rejected = logps.log_ratios()
        return chosen - rejected

    def loss(self, logps: PairLogps) -> Tensor:
        z = self.config.beta * self._h(logps)
        eps = self.config.label_smoothing
        return -(1.0 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)

    def rewards(self, logps: PairLogps) -> tuple[Tensor, Tensor]:
        if self.config.reference_free:
            return self.config.beta * logps.policy_chosen, self.config.beta * logps.policy_rejected
        return super().rewards(logps)


@dataclass(kw_only=True)
class IpoConfig(CriterionConfig):
    beta: float = 0.01
    """Regularization strength; the loss pulls h towards 1/(2*beta). The FSPO paper uses 0.01."""

    def validate(self) -> None:
        _check_beta("ipo", self.beta)


@register_criterion("ipo", IpoConfig)
class IpoCriterion(PreferenceCriterion):
    """Identity Preference Optimization, Azar et al. 2023 (arXiv 2310.12036), Eq. 17, as used by FSPO.

    loss = (h - 1/(2*beta))^2 with h = (log pi(yw) - log ref(yw)) - (log pi(yl) - log ref(yl)), log-probs
    summed over response tokens (as in the FSPO authors' code, not averaged).
    """

    config: IpoConfig

    def loss(self, logps: PairLogps) -> Tensor:
        chosen, rejected = logps.log_ratios()
        return (chosen - rejected - 1.0 / (2.0 * self.config.beta)) ** 2


@dataclass(kw_only=True)
class SimpoConfig(CriterionConfig):
    beta: float = 2.0
    """Scale of the length-normalized reward (SimPO's beta; the paper uses 2.0 to 2.5)."""

    gamma: float = 0.5
    """Target reward margin gamma (in reward units, after scaling by beta)."""

    def validate(self) -> None:
        _check_beta("simpo", self.beta)


@register_criterion("simpo", SimpoConfig)
class SimpoCriterion(PreferenceCriterion):
    """Simple Preference Optimization, Meng et al. 2024 (arXiv 2405.14734), Eq. 6. Needs no reference.

    loss = -log sigmoid(beta/|yw| * log pi(yw) - beta/|yl| * log pi(yl) - gamma).
    """

    config: SimpoConfig
    needs_reference = False  # type: ignore[assignment]

    def rewards(self, logps: PairLogps) -> tuple[Tensor, Tensor]:
        beta = self.config.beta
        return beta * logps.policy_chosen / logps.chosen_lengths, beta * logps.policy_rejected / logps.rejected_lengths

    def loss(self, logps: PairLogps) -> Tensor:
        chosen, rejected = self.rewards(logps)
        return -F.logsigmoid(chosen - rejected - self.config.gamma)


@dataclass(kw_only=True)
class SftConfig(CriterionConfig):
    include_rejected: bool = False
    """Also train on the rejected response, as the FSPO authors' SFT stage does. Off by default: SFT on the preferred
    answers alone teaches the model to write what each user prefers (on SmolLM2, after the same IPO + NLL stage, 1.00
    of held-out answers followed the user against 0.94 with both; docs/studies.md)."""

    length_normalized: bool = True
    """Average the NLL over a response's tokens (per-token NLL); False sums it (per-sequence NLL)."""


@register_criterion("sft", SftConfig)
class SftCriterion(PreferenceCriterion):
    """Supervised fine-tuning: negative log-likelihood of the responses given the few-shot prompt.

    loss = -log pi(yw) [- log pi(yl) when include_rejected], each divided by its token count when
    length_normalized. Implicit rewards are the policy's per-token log-probs (no reference is used).
    """

    config: SftConfig
    needs_reference = False  # type: ignore[assignment]

    def _nll(self, logp: Tensor, lengths: Tensor) -> Tensor:
        return -logp / lengths if self.config.length_normalized else -logp

    def loss(self, logps: PairLogps) -> Tensor:
        loss = self._nll(logps.policy_chosen, logps.chosen_lengths)
        if self.config.include_rejected:
            loss = loss + self._nll(logps.policy_rejected, logps.rejected_lengths)
        return loss

    def rewards(self, logps: PairLogps) -> tuple[Tensor, Tensor]:
        return logps.policy_chosen / logps.chosen_lengths, logps.policy_rejected / logps.rejected_lengths


def chosen_nll(logps: PairLogps) -> Tensor:
    """Per-token NLL of the chosen response, [batch]: the extra term any criterion gets with ``nll_scale``."""
    return -logps.policy_chosen / torch.clamp(logps.chosen_lengths, min=1.0)


@dataclass(kw_only=True)
class RpoConfig(CriterionConfig):
    preference: str = "ipo"
    """The preference loss the NLL term is added to: ``ipo`` or ``dpo`` (as registered, with this ``beta``)."""

    beta: float = 0.01
    """The preference loss's beta (IPO's 0.01 as in the FSPO paper; use about 0.1 with ``dpo``)."""

    alpha: float = 1.0
    """Weight of the chosen response's NLL, summed over its tokens (nats); 0 is the plain preference loss."""

    def validate(self) -> None:
        if self.preference not in ("ipo", "dpo"):
            raise CriterionError(f"Criterion 'rpo': preference must be 'ipo' or 'dpo', got {self.preference!r}.")
        _check_beta("rpo", self.beta)
        if not self.alpha >= 0.0:
            raise CriterionError(f"Criterion 'rpo': alpha must be >= 0, got {self.alpha}.")


@register_criterion("rpo", RpoConfig)
class RpoCriterion(PreferenceCriterion):
    """A preference loss that keeps the chosen response likely: IPO or DPO plus the chosen response's NLL (Pang et al.
    2024, arXiv 2404.19733, Eq. 1, "DPO + NLL"; Liu et al. 2024, arXiv 2405.16436, RPO).

    loss = preference_loss(h) + alpha * (-log pi(yw)), log-probs summed over response tokens. Preference losses
    alone only widen the gap between the two responses and may lower both (the chosen response's NLL rises while
    the ranking improves: the model forgets how to write); the NLL term holds the chosen response up. Summed, not
    per token, so that it stays in the preference loss's scale (IPO's loss is in squared nats of summed log-probs).
    """

    config: RpoConfig

    def __init__(self, config: RpoConfig) -> None:
        super().__init__(config)
        inner = IpoConfig(beta=config.beta) if config.preference == "ipo" else DpoConfig(beta=config.beta)
        self._preference: PreferenceCriterion = (IpoCriterion if config.preference == "ipo" else DpoCriterion)(inner)

    def loss(self, logps: PairLogps) -> Tensor:
        return self._preference.loss(logps) - self.config.alpha * logps.policy_chosen
