"""A byte-level BPE vocabulary learned from the texts a tiny model will train on (``fspo-tiny-assets --bpe-merges``).

The tiny model's default tokenizer has one token per byte, so it must assemble every word from its bytes before it
can use what the word means. Real tokenizers (Llama 3's, Qwen3's) have a token for each common word. This learns
such a vocabulary the usual way: split texts with Llama 3's pre-tokenizer pattern, then repeatedly merge the most
frequent adjacent pair of tokens (ties: the smaller pair of bytes). The result is a tiktoken file (one
``base64(token) rank`` line per token, ranks in merge order) that fairseq2's llama 3 tokenizer loads as is:
tiktoken applies the merges in rank order, so the learned words come out as single tokens.
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

TEXT_FIELDS = ("src", "tgt", "tgt_chosen", "tgt_rejected")
"""The fields of a fairseq2 JSONL line that a model trains on (instruction and preference readers)."""


def split_pattern() -> str:
    """The pre-tokenizer pattern of fairseq2's llama 3 tokenizer (the one that will encode the texts)."""
    from fairseq2.data.text.tokenizers.llama import LLaMA3Tokenizer

    return LLaMA3Tokenizer._SPLIT_REGEX


def corpus_texts(paths: Iterable[Path]) -> Iterator[str]:
    """The training texts of each file: the TEXT_FIELDS of every line of a ``.jsonl`` file, else each line."""
    for path in paths:
        with path.open(encoding="utf-8") as fp:
            for line_no, line in enumerate(fp, start=1):
                if path.suffix != ".jsonl":
                    yield line
                    continue
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}, line {line_no}: not valid JSON ({err.msg})") from None
                texts = [row[f] for f in TEXT_FIELDS if isinstance(row, dict) and isinstance(row.get(f), str)]
                if not texts:
                    raise ValueError(f"{path}, line {line_no}: expected a JSON object with a text field, one of "
                                     f"{', '.join(TEXT_FIELDS)}")
                yield from texts


def _merge(word: tuple[bytes, ...], pair: tuple[bytes, bytes]) -> tuple[bytes, ...]:
    out: list[bytes] = []
    i = 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(word[i] + word[i + 1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def learn_bpe(texts: Iterable[str], merges: int, min_count: int = 2) -> list[bytes]:
    """The 256 single bytes, then up to ``merges`` learned tokens in merge order (fewer when no pair occurs
    ``min_count`` times). Deterministic: the same texts give the same vocabulary."""
    import regex

    if merges < 0:
        raise ValueError(f"merges must be >= 0, got {merges}")
    pattern = regex.compile(split_pattern())
    pieces: Counter[bytes] = Counter()
    for text in texts:
        pieces.update(p.encode("utf-8") for p in pattern.findall(text))
    words = {tuple(bytes([b]) for b in piece): n for piece, n in pieces.items()}
    vocab = [bytes([b]) for b in range(256)]
    known = set(vocab)
    while len(vocab) - 256 < merges:
        pairs: Counter[tuple[bytes, bytes]] = Counter()
        for word, n in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += n
        if not pairs:
            break
        pair, count = max(pairs.items(), key=lambda kv: (kv[1], [-b for b in kv[0][0] + kv[0][1]]))
        if count < min_count:
            break
        merged: dict[tuple[bytes, ...], int] = {}
        for word, n in words.items():
            new = _merge(word, pair) if len(word) > 1 else word
            merged[new] = merged.get(new, 0) + n
        words = merged
        token = pair[0] + pair[1]
        if token not in known:  # the same bytes reached by another split: one token, the earlier rank
            vocab.append(token)
            known.add(token)
    return vocab


def tiktoken_text(tokens: list[bytes]) -> str:
    """The tiktoken file of ``tokens``: their rank is their index."""
    return "".join(f"{base64.b64encode(t).decode()} {rank}\n" for rank, t in enumerate(tokens))
