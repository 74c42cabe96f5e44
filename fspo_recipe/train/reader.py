"""The ``fspo_preference`` dataset family: fairseq2's preference JSONL, read without silent drops.

fairseq2 0.4.6's generic reader counts an example as 2P + Rc + Rr tokens (the prompt twice) and silently skips
what exceeds ``max_seq_len``; FSPO prompts of 4k+ tokens lose most of the data that way. This reader:

- counts an example as the shared-prefix layout holds it: P + Rc + Rr;
- shortens one that does not fit by dropping whole shots, oldest first (``# Example 1`` first), re-rendered with
  the data-prep template from the example's ``episode`` field (files without it: ``src`` parsed back); text is
  never cut inside a shot;
- drops an example only when even zero shots do not fit;
- counts and logs every shortened and dropped example, and names a malformed line by file and line number.

Select it with ``dataset.family=fspo_preference`` (a ``dataset.path``), or ``dataset_family: fspo_preference``
in a card. ``dataset.extras.chat_template=true`` wraps every prompt as the user turn and every response as the
assistant turn of the model's chat template (instruct models; see :class:`fspo_recipe.scoring.pairs.PairEncoder`). Everything else (batching, shuffling, sharding, reference scores) is as in the generic reader.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final, final

import torch
from typing_extensions import override

from fairseq2.data import CollateOptionsOverride, Collater, DataPipeline, create_bucket_sizes, read_sequence
from fairseq2.data.text.tokenizers import TextTokenizer
from fairseq2.datasets import DataPipelineReader, LengthBatching, StaticBatching
from fairseq2.datasets.preference import PreferenceBatch, PreferenceDataset, PreferenceReadOptions
from fairseq2.error import NotSupportedError
from fairseq2.gang import Gang
from fairseq2.logging import log
from fairseq2.models.sequence import SequenceBatch
from fairseq2.nn.padding import get_seqs_and_padding_mask

from fspo_recipe.data.episodes import PromptParseError, prompt_parts
from fspo_recipe.data.jsonl import PreferenceDataError as PreferenceDataError
from fspo_recipe.data.jsonl import default_id, read_preference_jsonl
from fspo_recipe.fairseq2_compat import load_files_and_weights
from fspo_recipe.scoring.pairs import PairEncoder

FSPO_PREFERENCE_FAMILY: Final = "fspo_preference"


@final
class FitCounter:
    """Thread-safe counts of examples shortened (shots dropped) or dropped, logged as they happen."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.read = 0
        self.shortened = 0
        self.shots_dropped = 0
        self.dropped = 0
        self.too_short = 0

    def snapshot(self) -> tuple[int, int, int, int, int]:
        """(read, shortened, shots dropped, dropped, shorter than min_seq_len) so far."""
        with self._lock:
            return self.read, self.shortened, self.shots_dropped, self.dropped, self.too_short

    def count_read(self) -> None:
        with self._lock:
            self.read += 1

    def count_too_short(self) -> None:
        with self._lock:
            self.too_short += 1

    def record(self, example_id: object, shots_dropped: int, dropped: bool, length: int, limit: int) -> None:
        with self._lock:
            if dropped:
                self.dropped += 1
                n = self.dropped
            else:
                self.shortened += 1
                self.shots_dropped += shots_dropped
                n = self.shortened
        what = "dropped (too long even without shots)" if dropped else f"shortened by {shots_dropped} shot(s)"
        if n <= 10 or n % 1000 == 0:
            log.info("fspo_preference: example {} {} ({} > max_seq_len {}); so far {} shortened ({} shots), "
                     "{} dropped.", example_id, what, length, limit, self.shortened, self.shots_dropped, self.dropped)


def fit_example(
    example: dict[str, Any],
    encoder: PairEncoder,
    max_seq_len: int,
    counter: FitCounter,
) -> dict[str, Any] | None:
    """Tokenize; drop oldest shots until P + Rc + Rr <= ``max_seq_len``; ``None`` if zero shots do not fit."""
    counter.count_read()
    src, chosen, rejected = encoder.encode(example["src"], example["tgt_chosen"], example["tgt_rejected"],
                                           example.get("messages"))
    targets = len(chosen) + len(rejected)
    length = len(src) + targets
    if length > max_seq_len:
        original = length
        try:  # the `episode` field (checked against `src` when the file was read)
            parts = prompt_parts(example)
        except PromptParseError:
            counter.record(example["id"], 0, True, original, max_seq_len)  # not a few-shot prompt: cannot shorten
            return None
        total = len(parts.shots)
        for keep in range(total - 1, -1, -1):
            src, chosen, rejected = encoder.encode(parts.render(keep, newest=True), example["tgt_chosen"],
                                                   example["tgt_rejected"])
            length = len(src) + len(chosen) + len(rejected)
            if length <= max_seq_len:
                counter.record(example["id"], total - keep, False, original, max_seq_len)
                break
        else:
            counter.record(example["id"], total, True, original, max_seq_len)
            return None
    return {"id": example["id"], "src": src, "tgt_chosen": chosen, "tgt_rejected": rejected,
            "reference_score_chosen": example.get("reference_score_chosen"),
            "reference_score_rejected": example.get("reference_score_rejected"), "total_tokens": length}


@final
class FspoPreferenceDataset(PreferenceDataset):
    """Preference JSONL files (a file, or a directory of ``*.jsonl`` with an optional MANIFEST)."""

    def __init__(self, name: str, files: Sequence[Path], weights: Sequence[float]) -> None:
        self._name = name
        self._files = files
        self._weights = weights
        self.counter = FitCounter()

    @staticmethod
    def from_path(path: Path, name: str) -> FspoPreferenceDataset:
        path = path.expanduser().resolve()
        if not path.exists():
            raise PreferenceDataError(
                f"Dataset '{name}': {path} does not exist (the `data` of its card, or `dataset.path`). Run "
                "fspo-prepare again, or fix the path."
            )
        if path.is_file():
            return FspoPreferenceDataset(name, [path], [1.0])
        files, weights = load_files_and_weights(name, path)
        return FspoPreferenceDataset(name, files, weights)

    def _read_jsonl(self, path: Path) -> list[dict[str, Any]]:
        return [{**ex, "id": ex.get("id", default_id(path, n))} for n, ex in read_preference_jsonl(path)]

    @staticmethod
    def pair_encoder(tokenizer: TextTokenizer, options: PreferenceReadOptions) -> PairEncoder:
        """Plain, or with the model's chat template when ``dataset.extras.chat_template`` is true (variables for
        the template in ``dataset.extras.chat_template_kwargs``)."""
        extras = options.extras or {}
        chat = extras.get("chat_template", False)
        kwargs = extras.get("chat_template_kwargs") or {}
        if not isinstance(chat, bool) or not isinstance(kwargs, dict):
            raise PreferenceDataError("dataset.extras.chat_template must be true or false, and "
                                      "dataset.extras.chat_template_kwargs a mapping.")
        try:
            return PairEncoder(tokenizer, chat_template=chat, chat_kwargs=kwargs,
                               source_mode=options.source_encode_mode, target_mode=options.target_encode_mode)
        except ValueError as ex:
            raise PreferenceDataError(f"dataset.extras.chat_template: {ex}") from None

    @override
    def create_reader(
        self,
        tokenizer: TextTokenizer,
        gang: Gang,
        min_seq_len: int,
        max_seq_len: int,
        options: PreferenceReadOptions | None = None,
    ) -> DataPipelineReader[PreferenceBatch]:
        options = options or PreferenceReadOptions()
        seed = options.seed

        if len(self._files) == 1:
            builder = read_sequence(self._read_jsonl(self._files[0]))
        else:
            pipelines = [read_sequence(self._read_jsonl(f)).and_return() for f in self._files]
            if options.sample:
                builder = DataPipeline.sample(pipelines, weights=self._weights, seed=seed)
                seed += 1
            else:
                builder = DataPipeline.concat(pipelines)

        if options.example_shuffle_window != 1:
            builder.shuffle(options.example_shuffle_window, seed=seed)
        seed += 1
        builder.shard(gang.rank, gang.size, allow_uneven=True)
        seed += gang.rank

        encoder = self.pair_encoder(tokenizer, options)
        counter = self.counter

        def long_enough(ex: dict[str, Any] | None) -> bool:
            if ex is None:
                return False
            if ex["total_tokens"] < min_seq_len:
                counter.count_too_short()
                return False
            return True

        builder.map(lambda ex: fit_example(ex, encoder, max_seq_len, counter))
        builder.filter(long_enough)

        def layout(ex: dict[str, Any]) -> dict[str, Any]:
            src = ex["src"]
            chosen = torch.cat([src, ex["tgt_chosen"]])
            rejected = torch.cat([src, ex["tgt_rejected"]])
            if options.mask_source_tokens:
                mask_c = torch.arange(len(chosen)) >= len(src)
                mask_r = torch.arange(len(rejected)) >= len(src)
            else:
                mask_c = torch.full([len(chosen)], True)
                mask_r = torch.full([len(rejected)], True)
            return {"id": ex["id"], "indices_chosen": chosen, "indices_rejected": rejected,
                    "target_mask_chosen": mask_c, "target_mask_rejected": mask_r, "total_tokens": ex["total_tokens"],
                    "reference_score_chosen": ex["reference_score_chosen"],
                    "reference_score_rejected": ex["reference_score_rejected"]}

        builder.map(layout)

        batching = options.batching
        if isinstance(batching, LengthBatching):
            bucket_sizes = create_bucket_sizes(
                min_seq_len=min_seq_len, max_seq_len=max_seq_len, max_num_elements=batching.max_num_elements
            )
            # Every example fits by now: nothing is skipped here.
            builder.bucket_by_length(bucket_sizes, selector="total_tokens", min_data_len=min_seq_len,
                                     skip_above_max_examples=False, drop_remainder=options.drop_remainder)
        elif isinstance(batching, StaticBatching):
            builder.bucket(batching.batch_size, drop_remainder=options.drop_remainder)
        else:
            raise NotSupportedError(f"`{batching}` is not supported.")

        if options.batch_shuffle_window != 1:
            builder.shuffle(options.batch_shuffle_window, seed=seed)
        seed += 1

        collater = Collater(pad_value=0, overrides=[CollateOptionsOverride("target_mask_chosen", pad_value=False),
                                                    CollateOptionsOverride("target_mask_rejected", pad_value=False)])
        builder.map(collater)
        if options.max_num_batches is not None:
            builder.take(options.max_num_batches)
        builder.prefetch(options.num_prefetch)

        def to_batch(example: dict[str, Any]) -> PreferenceBatch:
            sides = []
            for key in ("chosen", "rejected"):
                seqs, padding_mask = get_seqs_and_padding_mask(example[f"indices_{key}"], gang.device)
                target_mask = example[f"target_mask_{key}"]["seqs"].to(gang.device)
                sides.append(SequenceBatch(seqs, padding_mask, target_mask, example=example))
            # The FSPO unit reads reference scores per example; these tensors serve other units.
            scores = [example[f"reference_score_{k}"] for k in ("chosen", "rejected")]
            tensors = [None if any(v is None for v in vs) else torch.tensor(vs, device=gang.device) for vs in scores]
            return PreferenceBatch(sides[0], sides[1], tensors[0], tensors[1])

        pipeline = builder.map(to_batch).and_return()
        return FspoDataReader(self._name, "default", pipeline, gang, options, counter=counter,
                              files=self._files, max_seq_len=max_seq_len, min_seq_len=min_seq_len)


class EmptyPassError(PreferenceDataError):
    """A full pass over the data gave no batch: training would run zero steps and report success."""


class FspoDataReader(DataPipelineReader[PreferenceBatch]):
    """fairseq2's pipeline reader that also ends every pass over the data with its counts, and stops with
    :class:`EmptyPassError` when a pass that started from the beginning yields no batch (an empty file, or every
    example too long for ``max_seq_len``): fairseq2 would otherwise train 0 steps and say "Training complete"."""

    def __init__(self, name: str, split: str, pipeline: DataPipeline, gang: Gang, options: PreferenceReadOptions,
                 *, counter: FitCounter, files: Sequence[Path], max_seq_len: int, min_seq_len: int) -> None:
        super().__init__(name, split, pipeline, gang, options)
        self._counter = counter
        self._files = files
        self._limits = (min_seq_len, max_seq_len)
        self._pass_start = counter.snapshot()
        self._pass_batches = 0
        self._from_start = True  # False after a resume in the middle of a pass

    def __next__(self) -> list[PreferenceBatch]:
        try:
            batches = super().__next__()
        except StopIteration:
            self._end_of_pass()
            raise
        self._pass_batches += 1  # a successful read is a global step: every rank gets the same verdict on the end
        return batches

    def _end_of_pass(self) -> None:
        now = self._counter.snapshot()
        read, shortened, shots, dropped, too_short = (a - b for a, b in zip(now, self._pass_start))
        min_len, max_len = self._limits
        where = ", ".join(map(str, self._files[:3])) + (" ..." if len(self._files) > 3 else "")
        log.info("fspo_preference: end of a pass over {}: {} step(s); {} example(s) read on this rank, {} shortened ({} shots "
                 "dropped), {} dropped as too long for max_seq_len {}, {} shorter than min_seq_len {}.",
                 where, self._pass_batches, read, shortened, shots, dropped, max_len, too_short, min_len)
        empty = self._pass_batches == 0 and self._from_start
        self._pass_start, self._pass_batches = now, 0
        if empty:
            raise EmptyPassError(
                f"A whole pass over {where} gave no batch: {read} example(s) read on this rank, {dropped} too long "
                f"for dataset.max_seq_len={max_len} even without shots, {too_short} shorter than "
                f"dataset.min_seq_len={min_len}. Nothing to train on: check the data and dataset.max_seq_len."
            )

    def reset(self) -> None:
        super().reset()
        self._pass_start, self._pass_batches, self._from_start = self._counter.snapshot(), 0, True

    def load_state_dict(self, state_dict: Mapping[str, object]) -> None:
        super().load_state_dict(state_dict)
        self._pass_batches, self._from_start = 0, False
