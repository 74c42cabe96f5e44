"""``fairseq2 lm preference_eval``: score a model's personalization on held-out users.

    fairseq2 lm preference_eval OUT --config model.run_dir=runs/ipo reference.run_dir=runs/sft dataset=elix_test

Writes ``metrics.json`` (overall with 95% bootstrap intervals, per user, per number of shots, per step, per step and
user), ``per_user.csv``, ``shots.csv``, ``steps.csv``, ``steps_per_user.csv``, ``pairs.csv`` and PNG plots into OUT,
and, when ``generation.enabled``, ``generations.jsonl`` ready for a pairwise judge.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, final

import numpy as np
import torch

from fairseq2.context import RuntimeContext
from fairseq2.data.text.tokenizers import get_text_tokenizer_hub
from fairseq2.gang import fake_gangs
from fairseq2.logging import log
from fairseq2.models.decoder import DecoderModel
from fairseq2.recipes.common import load_reference_model, register_extra_asset_paths
from fairseq2.recipes.utils.progress import ProgressReporter
from fairseq2.utils.structured import structure
from fairseq2.utils.validation import validate

from fspo_recipe.criteria import CriterionConfig, PreferenceCriterion, check_same_vocabulary
from fspo_recipe.data.episodes import prompt_parts
from fspo_recipe.eval.config import EvalError, PreferenceEvalConfig
from fspo_recipe.eval.data import EvalData, dataset_file, read_examples, stored_reference
from fspo_recipe.eval.generation import (Fairseq2Answers, answer_record, generation_prompts, read_baseline,
                                         spread_over_users)
from fspo_recipe.eval.metrics import METRICS, pair_metrics, summarize
from fspo_recipe.files import atomic_file
from fspo_recipe.models.families import packed_model_families
from fspo_recipe.runs import add_run_card_directories, register_run_cards
from fspo_recipe.scoring.pairs import PairEncoder, PairScores, default_device, encode_pairs, score_pairs


@final
@dataclass
class ModelNames:
    """The asset names of what is evaluated: the policy per step (one entry unless ``all_checkpoints``), the final
    policy and the reference."""

    steps: dict[int, str]
    final: str
    reference: str | None


@final
class PreferenceEvaluator:
    """Runs one evaluation; called by fairseq2's recipe command with a progress reporter.

    Steps: resolve the model names (:meth:`resolve_models`), read and encode the split (:meth:`read_data`), score the
    reference (:meth:`score_reference`), score and summarize each policy checkpoint (:meth:`evaluate_policy`, with the
    shots ablation and generation for the final one), and write the outputs (:meth:`write`).
    """

    def __init__(self, context: RuntimeContext, config: PreferenceEvalConfig, output_dir: Path) -> None:
        self._context = context
        self._config = config
        self._out = output_dir
        self._device = default_device(config.device)
        self._gangs = fake_gangs(self._device)
        self._criterion = config.criterion.build_criterion()

    def __call__(self, progress: ProgressReporter) -> dict[str, Any]:
        register_extra_asset_paths(self._context, self._config)
        names = self.resolve_models()
        tokenizer = get_text_tokenizer_hub().load(names.final)
        data = self.read_data(tokenizer, names)
        with progress:
            reference, ablation_refs, ref_vocab = self.score_reference(progress, names, data)
            per_step: dict[int, dict[str, Any]] = {}
            per_step_user: dict[int, dict[str, Any]] = {}
            final: tuple[dict[str, np.ndarray], dict[str, Any], dict[int, dict[str, Any]]] | None = None
            for step, name in sorted(names.steps.items()):
                is_final = name == names.final
                per_pair, summary, shots = self.evaluate_policy(progress, name, names.reference, ref_vocab, data,
                                                               reference, ablation_refs, tokenizer, final=is_final)
                if step >= 0:
                    per_step[step], per_step_user[step] = summary["overall"], summary["per_user"]
                if is_final:
                    final = (per_pair, summary, shots)
        assert final is not None
        per_pair, summary, shots = final
        result = {
            "model": names.final,
            "reference": names.reference or ("reference scores of the data" if data.stored_reference else None),
            "dataset": str(data.path),
            "criterion": self._config.criterion.loss,
            **summary,
            "shots": {str(k): v for k, v in sorted(shots.items())},
            "steps": {str(k): v for k, v in sorted(per_step.items())},
            "steps_per_user": {str(k): v for k, v in sorted(per_step_user.items())},
        }
        self.write(result, per_pair, data.examples)
        log.info("preference_eval: {}", headline(result))
        print(headline(result))
        return result

    def resolve_models(self) -> ModelNames:
        """Cards for the checkpoints of ``model.run_dir`` / ``reference.run_dir``; the names to load."""
        config = self._config
        card_dir = self._out / "cards"
        for run_dir in (config.model.run_dir, config.reference.run_dir):
            if run_dir is not None:  # its base model's and tokenizer's cards, wherever the run was trained
                add_run_card_directories(self._context, run_dir)
        if config.model.run_dir is not None:
            steps = register_run_cards(self._context, config.model.run_dir, "policy", card_dir)
            if not config.all_checkpoints:
                steps = {max(steps): steps[max(steps)]}
            final = steps[max(steps)]
        else:
            final = config.model.name  # type: ignore[assignment]
            steps = {-1: final}  # -1: not a step of a run
        reference = config.reference.name
        if config.reference.run_dir is not None:
            ref_steps = register_run_cards(self._context, config.reference.run_dir, "reference", card_dir)
            reference = ref_steps[max(ref_steps)]
        return ModelNames(steps, final, reference)

    def read_data(self, tokenizer: Any, names: ModelNames) -> EvalData:
        """Read the split, check that a needed reference exists, and encode the pairs and the shots ablation."""
        path = dataset_file(self._context, self._config.dataset)
        examples = read_examples(path, self._config.max_examples)
        data = EvalData(path, examples, [str(e["user"]) for e in examples], stored_reference(examples))
        log.info("preference_eval: {} pairs of {} users from {}.", len(examples), len(set(data.users)), path)
        if self._criterion.needs_reference and names.reference is None and data.stored_reference is None:
            raise EvalError(
                f"{path} has no reference_score_chosen/_rejected and no reference model is set: set "
                "`reference.name` or `reference.run_dir`, or use a reference-free criterion "
                "(`criterion.loss=simpo`/`sft`)."
            )
        encoder = self._encoder(tokenizer)
        chosen, rejected = [e["tgt_chosen"] for e in examples], [e["tgt_rejected"] for e in examples]
        data.pairs = encode_pairs(tokenizer, [e["src"] for e in examples], chosen, rejected, encoder,
                                  [e.get("messages") for e in examples])
        data.ablation = {k: encode_pairs(tokenizer, prompts, chosen, rejected, encoder)
                         for k, prompts in self._ablation_prompts(examples).items()}
        return data

    def score_reference(self, progress: ProgressReporter, names: ModelNames, data: EvalData
                        ) -> tuple[PairScores | None, dict[int, PairScores], object]:
        """The reference's scores of the pairs and of every ablation (or the stored scores), and its vocabulary."""
        if names.reference is None:
            if data.ablation and self._criterion.needs_reference:
                log.warning("preference_eval: no reference model, so the shots ablation reports policy-only figures "
                            "(the stored reference scores belong to the full prompts).")
            return data.stored_reference, {}, None
        model = self._load(names.reference)
        scores = self._score(progress, model, data.pairs, "reference")
        ablation = {k: self._score(progress, model, pairs, f"reference, {k} shots") for k, pairs in data.ablation.items()}
        generation = self._config.generation
        if generation.enabled and generation.model == "reference":
            self._generate(progress, model, self._tokenizer_of(names.reference), data.examples)
        return scores, ablation, model.vocab_info

    def evaluate_policy(self, progress: ProgressReporter, name: str, reference_name: str | None, ref_vocab: object,
                        data: EvalData, reference: PairScores | None, ablation_refs: dict[int, PairScores],
                        tokenizer: Any, *, final: bool
                        ) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[int, dict[str, Any]]]:
        """Per-pair metrics and their summary for one policy; for the final one also the shots ablation (and the
        generations)."""
        model = self._load(name)
        if reference_name is not None:
            check_same_vocabulary(model.vocab_info, ref_vocab, name, reference_name)
        per_pair = pair_metrics(self._score(progress, model, data.pairs, name), reference, self._criterion)
        summary = self._summarize(per_pair, data.users)
        shots: dict[int, dict[str, Any]] = {}
        if final:
            for k, pairs in data.ablation.items():
                k_ref = ablation_refs.get(k)
                k_crit = self._criterion if (k_ref is not None or not self._criterion.needs_reference) else _PolicyOnly()
                k_scores = self._score(progress, model, pairs, f"{k} shots")
                shots[k] = self._summarize(pair_metrics(k_scores, k_ref, k_crit), data.users)["overall"]
            if self._config.generation.enabled and self._config.generation.model == "policy":
                self._generate(progress, model, tokenizer, data.examples)
        return per_pair, summary, shots

    def _encoder(self, tokenizer: Any) -> PairEncoder:
        try:
            return PairEncoder(tokenizer, chat_template=self._config.chat_template,
                               chat_kwargs=self._config.chat_template_kwargs)
        except ValueError as ex:
            raise EvalError(str(ex)) from None

    def _summarize(self, per_pair: Mapping[str, np.ndarray], users: Sequence[str]) -> dict[str, Any]:
        return summarize(per_pair, users, bootstrap_samples=self._config.bootstrap_samples, seed=self._config.seed)

    def _load(self, name: str) -> DecoderModel:
        """The model ``name`` for scoring (the packed-pairs classes of llama and mistral; fairseq2's otherwise)."""
        with packed_model_families(self._context):
            model = load_reference_model(DecoderModel, self._context, name, self._gangs, self._config.dtype, mp=False)
        return model.eval()

    def _score(self, progress: ProgressReporter, model: DecoderModel, pairs: Sequence[Any], label: str) -> PairScores:
        task = progress.create_task(f"scoring ({label})", total=len(pairs))
        try:
            return score_pairs(model, pairs, batch_size=self._config.batch_size, device=self._device, tick=task.step,
                               shared_prefix=self._config.shared_prefix)
        finally:
            task.close()

    def _ablation_prompts(self, examples: Sequence[Mapping[str, Any]]) -> dict[int, list[str]]:
        """The prompts of every example with its first k shots, per k (from the examples' ``episode`` fields)."""
        if self._config.shots == []:
            return {}
        try:
            parts = [prompt_parts(dict(e)) for e in examples]
        except ValueError as ex:  # PromptParseError included
            log.warning("preference_eval: no shots ablation, the prompts are not in the FSPO template ({}).", ex)
            return {}
        most = max(len(p.shots) for p in parts)
        counts = self._config.shots if self._config.shots is not None else list(range(most + 1))
        # k shots means min(k, available) for an example with fewer shots.
        return {k: [p.render(k) for p in parts] for k in sorted(set(counts)) if 0 <= k <= most}

    def _tokenizer_of(self, name: str) -> Any:
        return get_text_tokenizer_hub().load(name)

    def _generate(self, progress: ProgressReporter, model: DecoderModel, tokenizer: Any,
                  examples: Sequence[Mapping[str, Any]]) -> None:
        """Answer the first ``generation.max_examples`` queries into ``generations.jsonl``, one record per query with
        what ``fspo-judge`` reads (``question``, ``response``: the answer under the response header, ``user``,
        ``user_description``, ``system``) and the raw continuation (``generated``), the generated ``description``
        (rationale variant) and the data's preferred answer (``reference_chosen``). With a chat template the prompt
        is the user turn and generation stops at the template's end-of-turn token."""
        gen = self._config.generation
        baseline = read_baseline(gen.baseline_file) if gen.baseline_file is not None else {}
        chosen = spread_over_users(examples, gen.max_examples)
        prompts, questions, shots = generation_prompts(chosen, gen.shots)
        answers = Fairseq2Answers(model, tokenizer, self._encoder(tokenizer), greedy=gen.greedy, top_p=gen.top_p,
                                  temperature=gen.temperature, max_new_tokens=gen.max_new_tokens, seed=gen.seed,
                                  chat_kwargs=self._config.chat_template_kwargs)
        system = gen.system_name()
        task = progress.create_task(f"generating ({system})", total=len(chosen))
        try:
            records: dict[int, dict[str, Any]] = {}
            for i, text, count, ended in answers.generate(prompts, self._config.batch_size, self._device):
                records[i] = answer_record(chosen[i], question=questions[i], shots=shots[i], system=system,
                                           prompt=prompts[i], generated=text, tokens=count, ended=ended,
                                           baseline=baseline)
                task.step(1)
            with atomic_file(self._out / "generations.jsonl") as fp:  # in the split's order
                fp.writelines(json.dumps(records[i], ensure_ascii=False) + "\n" for i in sorted(records))
        finally:
            task.close()

    def write(self, result: dict[str, Any], per_pair: Mapping[str, np.ndarray], examples: Sequence[Mapping[str, Any]]) -> None:
        from fspo_recipe.eval.plots import plot_all

        self._out.mkdir(parents=True, exist_ok=True)
        with atomic_file(self._out / "metrics.json") as fp:
            fp.write(json.dumps(result, indent=2) + "\n")
        _write_csv(self._out / "per_user.csv", ["user", "pairs", *METRICS],
                   [{"user": u, **v} for u, v in result["per_user"].items()])
        _write_csv(self._out / "shots.csv", ["shots", "pairs", *METRICS],
                   [{"shots": k, **v} for k, v in result["shots"].items()])
        _write_csv(self._out / "steps.csv", ["step", "pairs", *METRICS],
                   [{"step": k, **v} for k, v in result["steps"].items()])
        _write_csv(self._out / "steps_per_user.csv", ["step", "user", "pairs", *METRICS],
                   [{"step": k, "user": u, **v} for k, users in result["steps_per_user"].items() for u, v in users.items()])
        _write_csv(self._out / "pairs.csv", ["id", "user", *METRICS],
                   [{"id": e["id"], "user": e["user"], **{m: per_pair[m][i] for m in METRICS}}
                    for i, e in enumerate(examples)])
        plot_all(result, self._out)


class _PolicyOnly(PreferenceCriterion):
    """Stands in for a reference-needing criterion when no reference exists: policy-only rewards, no loss."""

    def __init__(self) -> None:
        super().__init__(CriterionConfig())

    def loss(self, logps: Any) -> torch.Tensor:
        return torch.full_like(logps.policy_chosen, float("nan"))

    def rewards(self, logps: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return logps.policy_chosen, logps.policy_rejected


def headline(result: Mapping[str, Any]) -> str:
    o = result["overall"]
    lo, hi = o["reward_accuracy_ci95"]
    plo, phi = o["policy_accuracy_ci95"]
    return (f"held-out accuracy: implicit reward {o['reward_accuracy']:.3f} [95% CI {lo:.3f}, {hi:.3f}], "
            f"policy-only {o['policy_accuracy']:.3f} [{plo:.3f}, {phi:.3f}] on {o['pairs']} pairs of {o['users']} users")


def _write_csv(path: Path, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
    with atomic_file(path) as fp:
        writer = csv.DictWriter(fp, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def load_preference_evaluator(context: RuntimeContext, config: object, output_dir: Path) -> PreferenceEvaluator:
    """The loader of fairseq2's recipe command."""
    config = structure(config, PreferenceEvalConfig)
    validate(config)
    return PreferenceEvaluator(context, config, output_dir)
