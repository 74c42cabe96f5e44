"""The ``fspo_*`` presets of ``fairseq2 lm preference_finetune``, with the FSPO paper's defaults.

Paper: Singh et al. 2025, "FSPO: Few-Shot Preference Optimization of Synthetic Preference Data in LLMs Elicits
Effective Personalization to Real Users" (arXiv 2502.19312), and its released training code.

| field                                 | value                      | why                                            |
|---------------------------------------|----------------------------|------------------------------------------------|
| model.name                            | llama3_2_3b_instruct (sft) | the paper's model                              |
|                                       | last_checkpoint@ (ipo/dpo) | stage 2 starts from the SFT run's last step    |
| model.config.dropout_p                | 0.0                        | reference and policy log-probs must agree      |
| dataset.name                          | fspo_sample                | the bundled sample; use a prepared card        |
| dataset.family                        | fspo_preference            | no silent drops: oldest shots go first         |
| dataset.max_seq_len                   | 8192                       | the paper's max length (shots make long prompts)|
| dataset.batch_size                    | 4                          | the paper's batch of 4 pairs                   |
| trainer.dtype                         | bfloat16                   | as fairseq2's preference presets               |
| trainer.max_gradient_norm             | 10.0                       | the paper's gradient clipping                  |
| criterion.name                        | fspo                       | this plugin's unit                             |
| criterion.config.loss                 | sft / ipo / dpo            | stage 1 SFT, then IPO (or DPO)                 |
| ...loss_params.sft.include_rejected   | false                      | SFT on the preferred answers (the paper's code: both; measured worse for answers) |
| criterion.config.loss_params.ipo.beta | 0.01                       | the paper's IPO beta                           |
| criterion.config.loss_params.dpo.beta | 0.1                        | DPO's usual beta (the paper reports IPO's only)|
| criterion.config.reference_model.name | last_checkpoint@           | reference = the SFT model                      |
| optimizer                             | rmsprop                    | the paper's optimizer                          |
| optimizer.config.lr                   | 1e-7 (sft), 1e-6 (ipo/dpo) | the paper's learning rates                     |
| lr_scheduler                          | 150 warm-up steps, then constant | the paper's schedule (cosine_annealing, final_lr_scale 1.0) |
| regime.num_data_epochs                | 1                          | one epoch over the episodes                    |

Stage 2 finds the SFT model through fairseq2's checkpoint cards: pass
``--config common.assets.checkpoint_dir=<SFT output dir>/checkpoints``; ``last_checkpoint@`` then names its last
step, for the policy and the reference alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import torch

from fairseq2.context import RuntimeContext
from fairseq2.optim.lr_scheduler import COSINE_ANNEALING_LR, CosineAnnealingLRConfig
from fairseq2.recipes.config import (
    LRSchedulerSection,
    ModelSection,
    OptimizerSection,
    ReferenceModelSection,
    RegimeSection,
)
from fairseq2.recipes.lm import POCriterionSection, POFinetuneConfig

from fspo_recipe.criteria import default_loss_params
from fspo_recipe.train.optim import RMSPROP_OPTIMIZER, RMSpropConfig
from fspo_recipe.train.reader import FSPO_PREFERENCE_FAMILY
from fspo_recipe.train.unit import FSPO_UNIT, FspoUnitConfig

PAPER_MODEL: Final = "llama3_2_3b_instruct"
SFT_CHECKPOINT: Final = "last_checkpoint@"
SAMPLE_DATASET: Final = "fspo_sample"

@dataclass(kw_only=True)
class NoDropout:
    dropout_p: float = 0.0
    """Dropout of the model; 0 so that policy and reference log-probs of the same weights agree."""


def fspo_config(loss: str, *, lr: float, model: str, reference: str | None) -> POFinetuneConfig:
    """Return a POFinetuneConfig with the paper's defaults for criterion ``loss`` (see the module table)."""
    config = POFinetuneConfig()

    config.model = ModelSection(name=model, config=NoDropout())

    config.dataset.name = SAMPLE_DATASET
    config.dataset.family = FSPO_PREFERENCE_FAMILY  # for dataset.path; cards name their family
    config.dataset.max_seq_len = 8192
    config.dataset.max_num_tokens = 8192 * 4
    config.dataset.batch_size = 4

    config.trainer.dtype = torch.bfloat16
    config.trainer.max_gradient_norm = 10.0

    config.criterion = POCriterionSection(
        name=FSPO_UNIT,
        config=FspoUnitConfig(
            loss=loss,
            loss_params=default_loss_params(),  # every criterion's defaults: `loss=<name>` alone switches
            reference_model=None if reference is None else ReferenceModelSection(name=reference),
            reference_dtype=torch.bfloat16,
        ),
    )

    config.optimizer = OptimizerSection(name=RMSPROP_OPTIMIZER, config=RMSpropConfig(lr=lr))

    # Linear warm-up, then constant: a cosine whose final rate is the base rate (scale 1.0) is flat, whatever
    # its cycle length; the cycle length is given so that no step count is needed.
    config.lr_scheduler = LRSchedulerSection(
        name=COSINE_ANNEALING_LR,
        config=CosineAnnealingLRConfig(num_warmup_steps=150, final_lr_scale=1.0, cycle_len=1_000_000),
    )

    config.regime = RegimeSection(
        num_steps=None,
        num_data_epochs=1,
        checkpoint_every_n_steps=1000,
        keep_last_n_checkpoints=1,
        publish_metrics_every_n_steps=10,
    )

    return config


def register_fspo_presets(context: RuntimeContext) -> None:
    """Add the ``fspo_*`` presets to POFinetuneConfig's registry (idempotent)."""
    registry = context.get_config_registry(POFinetuneConfig)

    presets = {
        "fspo_sft": lambda: fspo_config("sft", lr=1e-7, model=PAPER_MODEL, reference=None),
        "fspo_ipo": lambda: fspo_config("ipo", lr=1e-6, model=SFT_CHECKPOINT, reference=SFT_CHECKPOINT),
        "fspo_dpo": lambda: fspo_config("dpo", lr=1e-6, model=SFT_CHECKPOINT, reference=SFT_CHECKPOINT),
    }

    for name, factory in presets.items():
        if not registry.has(name):
            registry.register(name, factory)
