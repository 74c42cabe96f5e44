"""The configuration of ``fairseq2 lm preference_eval`` (its sections and checks) and its preset ``fspo_eval``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import torch

from fairseq2.context import RuntimeContext
from fairseq2.recipes.config import CommonSection
from fairseq2.typing import DataType
from fairseq2.utils.validation import ValidationError, ValidationResult

from fspo_recipe.criteria import CriterionChoice, default_loss_params

PREFERENCE_EVAL: Final = "preference_eval"


class EvalError(ValueError):
    """The evaluation cannot run as configured; the message says what to change."""


@dataclass(kw_only=True)
class EvalModelSection:
    name: str | None = None
    """Asset card name of the model (e.g. ``llama3_2_3b_instruct``, ``checkpoint_step_200@``)."""

    run_dir: Path | None = None
    """Or: the OUTPUT_DIR of a ``fairseq2 lm preference_finetune`` run; its last ``step_N`` checkpoint is used."""

    def is_set(self) -> bool:
        return self.name is not None or self.run_dir is not None


@dataclass(kw_only=True)
class GenerationSection:
    enabled: bool = False
    """Generate responses for the held-out queries into ``generations.jsonl`` (for a pairwise judge)."""

    max_examples: int | None = 100
    """Queries to generate for, taken in turn from each user (every user is judged); ``None`` for all."""

    max_new_tokens: int = 256
    """Longest response, in tokens."""

    temperature: float = 0.7
    """Sampling temperature."""

    top_p: float = 0.9
    """Nucleus sampling mass."""

    greedy: bool = False
    """The most likely token at every step instead of sampling (deterministic)."""

    baseline_file: Path | None = None
    """JSONL with ``id`` and ``response`` of a baseline model; its response is written beside ours."""

    seed: int = 0
    """Seed of the sampler."""

    model: str = "policy"
    """Which model answers: ``policy``, or ``reference`` (e.g. the SFT model, as the baseline of a win rate)."""

    shots: int | None = None
    """Render the prompts with their first k shots (0: the no-shots baseline); ``None``: the data's prompts."""

    system: str | None = None
    """The name in each record's ``system`` field (``fspo-judge`` names systems by it); default e.g. ``policy``,
    ``reference_0shots``."""

    def system_name(self) -> str:
        return self.system or (self.model + ("" if self.shots is None else f"_{self.shots}shots"))


@dataclass(kw_only=True)
class PreferenceEvalConfig:
    model: EvalModelSection = field(default_factory=EvalModelSection)
    """The policy to evaluate."""

    reference: EvalModelSection = field(default_factory=EvalModelSection)
    """The reference model; unset: ``reference_score_*`` of the data (required when the criterion needs one)."""

    all_checkpoints: bool = False
    """With ``model.run_dir``: evaluate every ``step_N`` checkpoint (accuracy versus step); the last gets the rest."""

    dataset: str = "fspo_sample"
    """A prepared split: an asset card name (``elix_test``) or a JSONL file."""

    max_examples: int | None = None
    """Evaluate only the first examples of the split."""

    criterion: CriterionChoice = field(default_factory=CriterionChoice)
    """The criterion whose loss and implicit rewards are reported (``loss``, ``loss_params``), as in training."""

    batch_size: int = 8
    """Pairs per forward pass."""

    shared_prefix: bool = True
    """Score each pair as one sequence [prompt, chosen, rejected] (the prompt once; the same log-probs)."""

    chat_template: bool = False
    """Wrap the prompt as the user turn and each response as the assistant turn of the model's chat template (as
    training's ``dataset.extras.chat_template``); the model's tokenizer must be a Hugging Face one."""

    chat_template_kwargs: dict[str, object] = field(default_factory=dict)
    """Variables for the chat template (e.g. ``enable_thinking: false`` for Qwen3)."""

    dtype: DataType = torch.float32
    """Data type of the models."""

    device: str | None = None
    """``cpu``, ``cuda``, ...; default: ``FAIRSEQ2_DEVICE``, else CUDA when present, else CPU."""

    shots: list[int] | None = None
    """Shot counts of the ablation (prompts re-rendered with the first k shots); ``None``: 0..N; ``[]``: none."""

    bootstrap_samples: int = 1000
    """Resamples for the 95% intervals."""

    seed: int = 0
    """Seed of the bootstrap."""

    generation: GenerationSection = field(default_factory=GenerationSection)
    """Personalized generation for judging."""

    common: CommonSection = field(default_factory=CommonSection)
    """fairseq2's common section (``common.assets.extra_path`` adds cards, e.g. of tiny models or prepared data)."""

    def validate(self) -> None:
        result = ValidationResult()
        if self.model.name is not None and self.model.run_dir is not None:
            result.add_error("Set one of `model.name` and `model.run_dir`, not both.")
        if not self.model.is_set():
            result.add_error("Set `model.name` (an asset card) or `model.run_dir` (a training output directory).")
        if self.reference.name is not None and self.reference.run_dir is not None:
            result.add_error("Set one of `reference.name` and `reference.run_dir`, not both.")
        if self.all_checkpoints and self.model.run_dir is None:
            result.add_error("`all_checkpoints` needs `model.run_dir`.")
        if self.batch_size < 1:
            result.add_error(f"`batch_size` must be >= 1, but is {self.batch_size}.")
        gen = self.generation
        if gen.model not in ("policy", "reference"):
            result.add_error(f"`generation.model` must be `policy` or `reference`, but is {gen.model!r}.")
        if gen.enabled and gen.model == "reference" and not self.reference.is_set():
            result.add_error("`generation.model=reference` needs `reference.name` or `reference.run_dir`.")
        if gen.shots is not None and gen.shots < 0:
            result.add_error(f"`generation.shots` must be >= 0, but is {gen.shots}.")
        if gen.max_new_tokens < 1:
            result.add_error(f"`generation.max_new_tokens` must be >= 1, but is {gen.max_new_tokens}.")
        if result.has_error:
            raise ValidationError("The preference_eval configuration has one or more errors:", result)


def register_eval_presets(context: RuntimeContext) -> None:
    """``fspo_eval``: the paper's IPO criterion (beta 0.01) and every built-in's hyper-parameters."""
    registry = context.get_config_registry(PreferenceEvalConfig)
    if not registry.has("fspo_eval"):

        def fspo_eval() -> PreferenceEvalConfig:
            config = PreferenceEvalConfig()
            config.criterion.loss_params = default_loss_params()
            return config

        registry.register("fspo_eval", fspo_eval)
