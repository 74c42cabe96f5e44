from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

# Errors inside our extension must fail, not be logged and skipped (FAIRSEQ2_NOTES).
os.environ["FAIRSEQ2_EXTENSION_TRACE"] = "1"
# tiktoken caches tokenizer files by path; a regenerated file at the same path would read stale.
os.environ["TIKTOKEN_CACHE_DIR"] = ""

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "datasets" / "samples" / "fspo_sample" / "train.jsonl"

BOS, EOS, PAD = 256, 257, 260


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a command the tests run: extension errors fail, no stale tokenizer cache, ``extra``."""
    return {**os.environ, "FAIRSEQ2_EXTENSION_TRACE": "1", "TIKTOKEN_CACHE_DIR": "", **extra}


def sample_examples(n: int) -> list[dict[str, object]]:
    with SAMPLE.open(encoding="utf-8") as fp:
        return [json.loads(line) for _, line in zip(range(n), fp)]


def make_batch(examples: list[dict[str, object]], device: torch.device | None = None):
    """A PreferenceBatch as the stock reader builds it, byte-level: bos + prompt, response + eos, pad 0."""
    from fairseq2.datasets.preference import PreferenceBatch
    from fairseq2.models.sequence import SequenceBatch
    from fairseq2.nn.padding import PaddingMask

    def side(key: str) -> SequenceBatch:
        seqs, masks = [], []
        for ex in examples:
            prompt = [BOS, *str(ex["src"]).encode()]
            target = [*str(ex[key]).encode(), EOS]
            seqs.append(prompt + target)
            masks.append([False] * len(prompt) + [True] * len(target))
        width = max(map(len, seqs))
        lens = torch.tensor([len(s) for s in seqs])
        t = torch.tensor([s + [0] * (width - len(s)) for s in seqs])
        m = torch.tensor([k + [False] * (width - len(k)) for k in masks])
        padding = None if bool((lens == width).all()) else PaddingMask(lens, width)
        example = {
            "id": [ex.get("id") for ex in examples],
            "reference_score_chosen": [ex.get("reference_score_chosen") for ex in examples],
            "reference_score_rejected": [ex.get("reference_score_rejected") for ex in examples],
        }
        return SequenceBatch(t, padding, m, example=example)

    return PreferenceBatch(side("tgt_chosen"), side("tgt_rejected"), None, None)


@pytest.fixture(params=["llama"])
def tiny_model(request):
    """The tiny model as FSPO's commands load it (the family's packed-pairs classes): a llama, or with
    ``@pytest.mark.parametrize("tiny_model", ["llama", "qwen3"], indirect=True)`` each family in turn."""
    from fspo_recipe.models.tiny import TinyModelSpec, make_tiny_state_dict

    def build(seed: int = 0):
        spec = TinyModelSpec(family=request.param)
        model = spec.create_model()
        model.load_state_dict(make_tiny_state_dict(spec, seed))
        return model

    return build


@pytest.fixture()
def gangs():
    from fairseq2.gang import fake_gangs

    return fake_gangs(torch.device("cpu"))
