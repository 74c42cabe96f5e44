"""The evaluated split: its file (a path or a data set card), its examples, reference scores stored in it, and the
examples encoded once for every model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, final

import numpy as np

from fairseq2.context import RuntimeContext

from fspo_recipe.data.jsonl import default_id, read_preference_jsonl
from fspo_recipe.eval.config import EvalError
from fspo_recipe.scoring.pairs import EncodedPair, PairScores

def dataset_file(context: RuntimeContext, dataset: str) -> Path:
    """The JSONL of ``dataset``: a path, or the ``data`` of an asset card (a file, or a directory with one JSONL)."""
    path = Path(dataset)
    if not path.exists():
        try:
            card = context.asset_store.retrieve_card(dataset)
        except Exception as ex:  # noqa: BLE001 (fairseq2's lookup errors vary; the user needs the name)
            raise EvalError(f"'{dataset}' is neither a file nor a known dataset card ({ex}).") from ex
        uri = card.field("data").as_uri()
        path = Path(uri.removeprefix("file://"))
    if path.is_dir():
        files = sorted(path.glob("*.jsonl"))
        if len(files) != 1:
            raise EvalError(f"{path} holds {len(files)} JSONL files; name one file as `dataset`.")
        path = files[0]
    if not path.is_file():
        raise EvalError(f"Dataset file {path} does not exist.")
    return path


def read_examples(path: Path, limit: int | None) -> list[dict[str, Any]]:
    """The examples of a prepared split, with ``id`` and ``user`` defaults; a malformed line is named by file and
    line (:class:`PreferenceDataError`)."""
    examples = []
    for lineno, ex in read_preference_jsonl(path):
        if limit is not None and len(examples) >= limit:
            break
        examples.append({"id": default_id(path, lineno), "user": "(no user)", **ex})
    if not examples:
        raise EvalError(f"{path} has no examples.")
    return examples


def stored_reference(examples: Sequence[Mapping[str, Any]]) -> PairScores | None:
    """Reference log-probs stored in the examples, or ``None`` when no example has them (all or none)."""
    have = [e.get("reference_score_chosen") is not None and e.get("reference_score_rejected") is not None for e in examples]
    if not any(have):
        return None
    if not all(have):
        missing = [e["id"] for e, h in zip(examples, have) if not h][:5]
        raise EvalError(f"Some examples lack reference scores (e.g. ids {missing}); score the whole split.")
    c = np.array([float(e["reference_score_chosen"]) for e in examples])
    r = np.array([float(e["reference_score_rejected"]) for e in examples])
    return PairScores(c, r, np.zeros_like(c), np.zeros_like(r))


@final
@dataclass
class EvalData:
    """The examples of the evaluated split, encoded once for every model."""

    path: Path
    examples: list[dict[str, Any]]
    users: list[str]
    stored_reference: PairScores | None
    """Reference log-probs stored in the data (``reference_score_*``), if any."""

    pairs: list[EncodedPair] = field(default_factory=list)
    """Every example's prompt and responses as token ids."""

    ablation: dict[int, list[EncodedPair]] = field(default_factory=dict)
    """The same pairs with their prompts re-rendered with k shots, per k of the shots ablation."""
