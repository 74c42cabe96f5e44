"""RMSprop for fairseq2's optimizer registry: the optimizer of the FSPO (and original DPO) training code.

fairseq2 0.4.6 registers only AdamW; this adds ``optimizer.name=rmsprop`` without forking anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, final

from torch.optim import Optimizer, RMSprop
from typing_extensions import override

from fairseq2.optim import OptimizerHandler
from fairseq2.utils.structured import structure
from fairseq2.utils.validation import ValidationError, ValidationResult, validate

RMSPROP_OPTIMIZER: Final = "rmsprop"


@dataclass(kw_only=True)
class RMSpropConfig:
    lr: float = 1e-6
    """The learning rate (FSPO: 1e-6 for IPO/DPO, 1e-7 for SFT)."""

    alpha: float = 0.99
    """Smoothing constant of the running average of squared gradients."""

    eps: float = 1e-8
    """Term added to the denominator for numerical stability."""

    weight_decay: float = 0.0
    """The weight decay coefficient (L2 penalty)."""

    momentum: float = 0.0
    """Momentum factor."""

    centered: bool = False
    """If ``True``, normalizes the gradient by an estimate of its variance."""

    def validate(self) -> None:
        result = ValidationResult()
        if self.lr < 0.0:
            result.add_error(f"`lr` must be >= 0, but is {self.lr}.")
        if not 0.0 <= self.alpha <= 1.0:
            result.add_error(f"`alpha` must be in [0, 1], but is {self.alpha}.")
        if result.has_error:
            raise ValidationError("The RMSprop configuration has one or more validation errors:", result)


@final
class RMSpropHandler(OptimizerHandler):
    @override
    def create(self, params: object, config: object) -> Optimizer:
        config = structure(config, RMSpropConfig)
        validate(config)
        return RMSprop(
            params,  # type: ignore[arg-type]
            lr=config.lr,
            alpha=config.alpha,
            eps=config.eps,
            weight_decay=config.weight_decay,
            momentum=config.momentum,
            centered=config.centered,
        )

    @property
    @override
    def config_kls(self) -> type[object]:
        return RMSpropConfig
