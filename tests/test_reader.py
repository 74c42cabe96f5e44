"""The fspo_preference reader: length as the shared layout holds it, oldest shots dropped first, nothing silent."""

from __future__ import annotations

import json

import pytest
import torch

from fspo_recipe.data.episodes import parse_prompt, render_episode, render_with_shots
from fspo_recipe.train.reader import FspoPreferenceDataset, PreferenceDataError

SHOTS = [(f"question {i}?", f"preferred answer number {i}", f"dispreferred answer {i}") for i in range(1, 5)]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from fairseq2.data.text.tokenizers.llama import LLaMA3Tokenizer
    from fspo_recipe.models.tiny import write_tiny_assets

    d = tmp_path_factory.mktemp("tok")
    write_tiny_assets(d, seed=0)
    return LLaMA3Tokenizer(d / "tokenizer.model")


def episode(i: int, shots=SHOTS) -> dict:
    ep = render_episode(shots, f"query {i}?", "chosen text", "rejected text")
    return {"id": f"ep{i}", "src": ep.prompt, "tgt_chosen": ep.chosen, "tgt_rejected": ep.rejected}


def read_all(path, tokenizer, max_seq_len):
    from fairseq2.datasets import StaticBatching
    from fairseq2.datasets.preference import PreferenceReadOptions
    from fairseq2.gang import FakeGang

    dataset = FspoPreferenceDataset.from_path(path, "test")
    options = PreferenceReadOptions(batching=StaticBatching(16), example_shuffle_window=1, batch_shuffle_window=1)
    reader = dataset.create_reader(tokenizer, FakeGang(device=torch.device("cpu")), 1, max_seq_len, options)
    batches = [b for group in reader for b in group]
    return dataset, batches


def lengths(ex: dict) -> tuple[int, int]:
    """(prompt tokens incl. bos, both responses incl. eos) for the byte-level tokenizer."""
    return len(ex["src"].encode()) + 1, len(ex["tgt_chosen"].encode()) + len(ex["tgt_rejected"].encode()) + 2


def test_fits_as_the_shared_layout_counts(tmp_path, tokenizer) -> None:
    ex = episode(0)
    p, r = lengths(ex)
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(ex) + "\n")
    dataset, batches = read_all(path, tokenizer, p + r)  # exactly P + Rc + Rr: the stock reader (2P+...) drops it
    assert len(batches) == 1 and batches[0].chosen.batch_size == 1
    assert dataset.counter.shortened == dataset.counter.dropped == 0
    prompt_len = int(batches[0].chosen.target_mask[0].nonzero()[0])
    assert prompt_len == p


def test_oldest_shots_go_first_and_nothing_is_silent(tmp_path, tokenizer) -> None:
    long, short_prompt, hopeless = episode(1), episode(2, SHOTS[:1]), episode(3)
    hopeless["tgt_chosen"] = "## Preferred Response \n" + "x" * 2000 + "\n"
    p, r = lengths(long)
    block = len("# Example 1\n## Question \nquestion 1?\n## Preferred Response \npreferred answer number 1\n"
                "## Dispreferred Response \ndispreferred answer 1\n\n".encode())
    limit = p + r - block  # fits exactly once the oldest shot is gone: exactly one must go
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in (long, short_prompt, hopeless)))
    dataset, batches = read_all(path, tokenizer, limit)

    ids = [i for b in batches for i in b.chosen.example["id"]]
    assert ids == ["ep1", "ep2"]  # ep3 does not fit even without shots
    expected = render_with_shots(parse_prompt(long["src"]), 3, newest=True)
    assert expected.startswith("# Example 1\n## Question \nquestion 2?\n")  # shot 1 (the oldest) went first
    row = batches[0].chosen
    prompt_len = int(row.target_mask[0].nonzero()[0])
    got = bytes(t for t in row.seqs[0, 1:prompt_len].tolist()).decode()
    assert got == expected
    assert dataset.counter.shortened == 1 and dataset.counter.shots_dropped == 1 and dataset.counter.dropped == 1


@pytest.mark.parametrize(
    "content,match",
    [
        ('{"src": "a", "tgt_chosen": "b", "tgt_rejected": "c"}\n{"src": "a", "tgt_chosen": \n', r"train.jsonl, line 2, column 28: not valid JSON"),
        ('{"src": "a", "tgt_chosen": 3, "tgt_rejected": "c"}\n', r"line 1: field 'tgt_chosen' must be a string"),
        ('{"src": "a", "tgt_rejected": "c"}\n', r"line 1: field 'tgt_chosen' must be a string"),
        ('{"src": "a", "tgt_chosen": "", "tgt_rejected": "c"}\n', r"line 1: empty response"),
        ('[1, 2]\n', r"line 1: expected a JSON object"),
    ],
)
def test_bad_lines_are_named(tmp_path, tokenizer, content, match) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text(content)
    with pytest.raises(PreferenceDataError, match=match):
        read_all(path, tokenizer, 1000)


def test_non_utf8_is_named(tmp_path, tokenizer) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(b'{"src": "caf\xe9", "tgt_chosen": "b", "tgt_rejected": "c"}\n')
    with pytest.raises(PreferenceDataError, match=r"train.jsonl: not UTF-8 text"):
        read_all(path, tokenizer, 1000)
