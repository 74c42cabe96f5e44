"""The FSPO train unit: one unit for every criterion.

batch -> summed response log-probs of policy (and reference, or precomputed scores) -> criterion -> loss, metrics.
Adding a criterion never touches this file: the unit only knows :class:`PreferenceCriterion`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, final

import torch
from torch import Tensor
from torch.nn import Module
from torcheval.metrics import Mean
from typing_extensions import override

from fairseq2.context import RuntimeContext
from fairseq2.datasets.preference import PreferenceBatch
from fairseq2.gang import Gang, Gangs
from fairseq2.logging import log
from fairseq2.models.decoder import DecoderModel
from fairseq2.nn.utils.module import freeze_parameters
from fairseq2.recipes.common import setup_reference_model
from fairseq2.recipes.config import ModelSection, ReferenceModelSection, TrainerSection, get_config_section
from fairseq2.recipes.lm import POCriterionSection, POFinetuneUnitHandler
from fairseq2.recipes.metrics import SequenceMetricBag
from fairseq2.recipes.trainer import AbstractTrainUnit, TrainUnit
from fairseq2.typing import DataType
from fairseq2.utils.structured import structure
from fairseq2.utils.validation import validate

from fspo_recipe.criteria import (CriterionChoice, CriterionError, PairLogps, PreferenceCriterion, check_same_vocabulary,
                                  chosen_nll)
from fspo_recipe.fairseq2_compat import repair_ddp_buffers
from fspo_recipe.models.packing import PairLogpsRequest
from fspo_recipe.models.transformer import compile_layer_blocks
from fspo_recipe.scoring.logps import stock_pair_logps, supports_packing, unwrap_decoder
from fspo_recipe.train.metrics import METRIC_NAMES

FSPO_UNIT: Final = "fspo"

REFERENCE_OVERRIDE: Final = "--config 'criterion.config.reference_model={name: MODEL}'"
"""How to name a reference model on the command line when the preset has none (``reference_model.name=MODEL``
cannot be merged into a null section)."""


@dataclass(kw_only=True)
class FspoUnitConfig(CriterionChoice):
    """``criterion.config`` of ``criterion.name=fspo``: the criterion (``loss``, ``loss_params``) and how to run it."""

    nll_scale: float = 0.0
    """Weight of an extra per-token NLL term on the chosen response, added to any criterion's loss."""

    reference_model: ReferenceModelSection | None = None
    """The frozen reference model. ``None`` reads ``reference_score_chosen``/``reference_score_rejected`` from the
    data instead. Not loaded when the criterion needs no reference (sft, simpo, reference-free dpo)."""

    reference_dtype: DataType = torch.bfloat16
    """The data type of the reference model."""

    shared_prefix: bool = True
    """Run each pair as one sequence [prompt, chosen, rejected] (the prompt once, same log-probs as two sequences)."""

    compile_layers: bool = False
    """Compile with ``torch.compile`` the parts of every decoder layer that compile without graph breaks (norms,
    feed-forward blocks, the packed attention's projections and rotary encoding), policy and reference, leaving the
    shared-prefix attention eager (:func:`fspo_recipe.models.transformer.compile_layer_blocks`). The first steps
    take longer (compilation). (fairseq2 0.4.6's own ``trainer.torch_compile`` fails before training: its
    ``compile_model`` returns the ``None`` of ``Module.compile``.)"""

    compile_backend: str = "inductor"
    """The ``torch.compile`` backend of ``compile_layers`` (``aot_eager``: the same graphs without code generation,
    to tell a compiler problem from a model problem)."""

    def validate(self) -> None:
        super().validate()
        if self.nll_scale < 0.0:
            raise CriterionError(f"criterion.config.nll_scale must be >= 0, got {self.nll_scale}.")


@final
class FspoMetricBag(SequenceMetricBag):
    """The metrics of the FSPO unit (:data:`~fspo_recipe.train.metrics.UNIT_METRICS`); every value is a mean over
    pairs, synchronized over data-parallel ranks."""

    def __init__(self, gang: Gang) -> None:
        super().__init__(gang)
        for name in METRIC_NAMES:
            if not hasattr(self, name):  # SequenceMetricBag already has `nll_loss`
                self.register_metric(name, Mean(device=gang.device), persistent=False)

    @torch.inference_mode()
    def update_pairs(self, values: dict[str, Tensor]) -> None:
        """Add per-pair values (each [batch]) to the means, weighted by the number of pairs."""
        for name, value in values.items():
            n = value.numel()
            getattr(self, name).update(value.detach().float().sum() / n, weight=n)


@final
class FspoFinetuneUnit(AbstractTrainUnit[PreferenceBatch]):
    """Trains a decoder on preference pairs with any :class:`PreferenceCriterion`.

    Returns the loss summed over the pairs of the batch and the number of pairs; fairseq2's trainer divides the
    gradients by the total number of pairs over gradient-accumulation steps and data-parallel ranks, so the
    update is that of the mean per-pair loss.
    """

    def __init__(
        self,
        model: Module,
        reference_model: Module | None,
        criterion: PreferenceCriterion,
        gangs: Gangs,
        *,
        nll_scale: float = 0.0,
        shared_prefix: bool = True,
    ) -> None:
        super().__init__(model)
        repair_ddp_buffers(model)
        self._packed = supports_packing(model)
        if not self._packed:
            log.info("FSPO unit: {} does not implement the packed-pairs interface (fspo_recipe.models.packing); "
                     "pairs run on the paired path with full logits.", type(unwrap_decoder(model)).__name__)
        self._reference_packed = reference_model is not None and supports_packing(reference_model)
        self._reference_model = reference_model
        self._criterion = criterion
        self._nll_scale = nll_scale
        self._shared_prefix = shared_prefix
        self._metric_bag = FspoMetricBag(gangs.dp)
        self._step_nr = 0

    @override
    def set_step_nr(self, step_nr: int) -> None:
        self._step_nr = step_nr

    @property
    def criterion(self) -> PreferenceCriterion:
        return self._criterion

    def compute_logps(self, batch: PreferenceBatch) -> PairLogps:
        """Run the policy (with grad) and the reference (without) over ``batch``; see :class:`PairLogps`."""
        size = batch.chosen.batch_size

        logps, lengths = self._pair_logps(self._model, self._packed, batch)

        ref_chosen: Tensor | None = None
        ref_rejected: Tensor | None = None
        if self._criterion.needs_reference:
            if self._reference_model is not None:
                with torch.no_grad():
                    ref_logps, _ = self._pair_logps(self._reference_model, self._reference_packed, batch)
                ref_chosen, ref_rejected = ref_logps[:size], ref_logps[size:]
            else:
                ref_chosen, ref_rejected = reference_scores(batch, logps.device)

        return PairLogps(
            policy_chosen=logps[:size],
            policy_rejected=logps[size:],
            ref_chosen=ref_chosen,
            ref_rejected=ref_rejected,
            chosen_lengths=lengths[:size],
            rejected_lengths=lengths[size:],
        )

    def _pair_logps(self, model: Module, packed: bool, batch: PreferenceBatch) -> tuple[Tensor, Tensor]:
        """Through the (possibly DDP/FSDP-wrapped) model's forward: the packed entry point, or the paired path."""
        if packed:
            return model(PairLogpsRequest(batch.chosen, batch.rejected, shared_prefix=self._shared_prefix))
        return stock_pair_logps(model, batch.chosen, batch.rejected)

    @override
    def __call__(self, batch: PreferenceBatch) -> tuple[Tensor, int]:
        logps = self.compute_logps(batch)

        criterion_loss = self._criterion.loss(logps)
        nll = chosen_nll(logps)
        loss = criterion_loss + self._nll_scale * nll if self._nll_scale else criterion_loss
        example = batch.chosen.example
        check_finite_loss(loss, self._step_nr, example.get("id") if isinstance(example, dict) else None)

        with torch.no_grad():
            chosen_rewards, rejected_rewards = self._criterion.rewards(logps)

        self._metric_bag.update_pairs(
            {
                "fspo_loss": loss,
                "criterion_loss": criterion_loss,
                "nll_loss": nll,
                "reward_accuracy": (chosen_rewards > rejected_rewards).float(),
                "reward_margin": chosen_rewards - rejected_rewards,
                "chosen_rewards": chosen_rewards,
                "rejected_rewards": rejected_rewards,
                "chosen_logps": logps.policy_chosen,
                "rejected_logps": logps.policy_rejected,
                "chosen_lengths": logps.chosen_lengths,
                "rejected_lengths": logps.rejected_lengths,
            }
        )
        self._metric_bag.update_batch_metrics(batch.chosen)

        return loss.sum(), batch.chosen.batch_size

    @property
    @override
    def metric_bag(self) -> FspoMetricBag:
        return self._metric_bag


def reference_scores(batch: PreferenceBatch, device: torch.device) -> tuple[Tensor, Tensor]:
    """Read ``reference_score_chosen``/``_rejected`` of every example of ``batch`` ([B] each, nats).

    Read from the examples rather than ``batch.reference_score_*``: fairseq2 0.4.6's reader drops a batch's
    scores when any score is exactly 0.0.

    :raises CriterionError: when some or all examples lack scores (and no reference model is configured).
    """
    example = batch.chosen.example
    if not isinstance(example, dict):
        raise CriterionError("The batch carries no examples to read reference scores from.")

    def column(key: str) -> Tensor:
        values: Sequence[object] | Tensor | None = example.get(key)
        if isinstance(values, Tensor):
            return values.to(device=device, dtype=torch.float32)
        values = list(values or [])
        missing = [i for i, v in enumerate(values) if v is None]
        if not values or missing:
            ids = example.get("id") or []
            which = [ids[i] if i < len(ids) else i for i in missing[:5]]
            raise CriterionError(
                f"The criterion needs reference log-probs, but `criterion.config.reference_model` is null and "
                f"{len(missing) or 'all'} example(s) of the batch have no `{key}` (ids: {which}). Name a reference "
                f"model with {REFERENCE_OVERRIDE}, or score the data with fspo-score-reference first."
            )
        return torch.tensor([float(v) for v in values], device=device)  # type: ignore[arg-type]

    return column("reference_score_chosen"), column("reference_score_rejected")


@final
class TrainingDivergedError(FloatingPointError):
    """The loss of a step is NaN or infinite; raised before that step updates anything."""


def check_finite_loss(loss: Tensor, step_nr: int, ids: Sequence[object] | None) -> None:
    """Raise :class:`TrainingDivergedError` naming ``step_nr`` and the pairs when ``loss`` ([B]) is not finite."""
    finite = torch.isfinite(loss.detach())
    if bool(finite.all()):
        return
    bad = (~finite).nonzero().flatten().tolist()
    which = [ids[i] if ids is not None and i < len(ids) else i for i in bad[:5]]
    raise TrainingDivergedError(
        f"The FSPO loss is {loss.detach()[bad[0]].item()} at step {step_nr} for {len(bad)} of {loss.numel()} pair(s) "
        f"(ids: {which}). Training stopped before this step changed the model; the checkpoints of earlier steps are "
        "intact and the same command resumes from the last one. Lower the learning rate, or check these examples."
    )


class FspoFinetuneUnitHandler(POFinetuneUnitHandler):
    """Creates :class:`FspoFinetuneUnit` for ``criterion.name=fspo``."""

    def __init__(self, context: RuntimeContext) -> None:
        self._context = context

    @override
    def create(self, model: Module, gangs: Gangs, recipe_config: object) -> TrainUnit[PreferenceBatch]:
        section = get_config_section(recipe_config, "criterion", POCriterionSection)
        config = structure(section.config, FspoUnitConfig)
        validate(config)

        criterion = config.build_criterion()
        log.info("FSPO unit: criterion {} with {}.", config.loss, criterion.config)

        reference_model = None
        if criterion.needs_reference and config.reference_model is not None:
            trainer_section = get_config_section(recipe_config, "trainer", TrainerSection)
            reference_model = setup_reference_model(
                DecoderModel,
                self._context,
                config.reference_model.name,
                gangs,
                config.reference_dtype,
                mp=False,
                torch_compile=trainer_section.torch_compile,
            )
            freeze_parameters(reference_model)
            model_section = get_config_section(recipe_config, "model", ModelSection)
            check_same_vocabulary(unwrap_decoder(model).vocab_info, unwrap_decoder(reference_model).vocab_info,
                                  str(model_section.name or model_section.path), config.reference_model.name)
        elif criterion.needs_reference:
            log.info("FSPO unit: no reference model; reading reference scores from the data.")
        else:
            log.info("FSPO unit: criterion {} needs no reference; no reference model is loaded.", config.loss)

        if config.compile_layers:
            count = sum(compile_layer_blocks(m, backend=config.compile_backend)
                        for m in (model, reference_model) if m is not None)
            log.info("FSPO unit: compiled {} layer blocks (norms, feed-forward, projections and rotary) with {}.",
                     count, config.compile_backend)

        return FspoFinetuneUnit(
            model, reference_model, criterion, gangs, nll_scale=config.nll_scale, shared_prefix=config.shared_prefix
        )

    @property
    @override
    def config_kls(self) -> type[object]:
        return FspoUnitConfig
