"""Embeddings of (question, answer) texts with a frozen model of this plugin, cached on disk.

The text of a point is ``## Question \\n<question>\\n## Response \\n<answer>\\n`` (the FSPO template's headers),
encoded as a prompt (with the tokenizer's beginning-of-sequence token). Its embedding is the final hidden state
(after the decoder's last layer norm) either averaged over the text's tokens (``mean``, the default) or taken at
its last token (``last``).

The cache is a directory: ``meta.json`` (model, pooling, width), ``chunk_NNNNN.safetensors`` (an ``embeddings``
tensor [n, D], float32) and ``index.jsonl`` (one line per embedded text: its SHA-256 key, chunk and row). A chunk
is written whole (temporary file, then renamed) before its index lines, so an interrupted run loses at most the
chunk in progress and a second run embeds only the texts not in the index.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Final

import torch

from fspo_recipe.data.episodes import QUESTION_HEADER, RESPONSE_HEADER
from fspo_recipe.files import atomic_file, atomic_path, complete_lines

POOLINGS: Final = ("mean", "last")


class EmbeddingError(ValueError):
    """Embeddings cannot be made or read as asked; the message says what to change."""


def point_text(question: str, answer: str) -> str:
    return f"{QUESTION_HEADER}{question.strip()}\n{RESPONSE_HEADER}{answer.strip()}\n"


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class EmbeddingCache:
    """The embeddings of one model and pooling (see the module docstring)."""

    def __init__(self, directory: Path, *, model: str, pooling: str) -> None:
        self.dir = directory
        self.meta = {"model": model, "pooling": pooling}
        self.index: dict[str, tuple[int, int]] = {}
        self._chunks: dict[int, torch.Tensor] = {}
        meta_file = directory / "meta.json"
        if meta_file.is_file():
            have = json.loads(meta_file.read_text(encoding="utf-8"))
            if {k: have.get(k) for k in self.meta} != self.meta:
                raise EmbeddingError(f"{directory} holds embeddings of {have.get('model')!r} ({have.get('pooling')} "
                                     f"pooling), not of {model!r} ({pooling}); use another --out.")
            self.meta = have
            self._read_index()

    @staticmethod
    def open_existing(directory: Path) -> EmbeddingCache:
        meta_file = directory / "meta.json"
        if not meta_file.is_file():
            raise EmbeddingError(f"{directory} is not an embedding directory (no meta.json): run `fspo-gpo embed`.")
        have = json.loads(meta_file.read_text(encoding="utf-8"))
        return EmbeddingCache(directory, model=str(have.get("model")), pooling=str(have.get("pooling")))

    def _read_index(self) -> None:
        path = self.dir / "index.jsonl"
        # A line cut short by a crash is dropped (its chunk is complete).
        for lineno, line in enumerate(complete_lines(path), 1):
            try:
                rec = json.loads(line)
                self.index[rec["key"]] = (int(rec["chunk"]), int(rec["row"]))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                raise EmbeddingError(f"{path}, line {lineno}: not an index entry.") from None

    @property
    def dim(self) -> int | None:
        return self.meta.get("dim")  # type: ignore[return-value]

    def missing(self, texts: Iterable[str]) -> list[str]:
        seen: set[str] = set()
        out = []
        for t in texts:
            k = text_key(t)
            if k not in self.index and k not in seen:
                seen.add(k)
                out.append(t)
        return out

    def add_chunk(self, texts: Sequence[str], embeddings: torch.Tensor) -> None:
        from safetensors.torch import save_file

        self.dir.mkdir(parents=True, exist_ok=True)
        if self.dim is None:
            self.meta["dim"] = int(embeddings.size(1))
            with atomic_file(self.dir / "meta.json") as fp:
                json.dump(self.meta, fp)
        chunk = 1 + max((c for c, _ in self.index.values()), default=-1)
        path = self.dir / f"chunk_{chunk:05d}.safetensors"
        with atomic_path(path) as tmp:
            save_file({"embeddings": embeddings.detach().float().cpu().contiguous()}, str(tmp))
        with (self.dir / "index.jsonl").open("a", encoding="utf-8") as fp:
            for row, text in enumerate(texts):
                key = text_key(text)
                self.index[key] = (chunk, row)
                fp.write(json.dumps({"key": key, "chunk": chunk, "row": row}) + "\n")

    def lookup(self, texts: Sequence[str]) -> torch.Tensor:
        """[len(texts), D] float32; :class:`EmbeddingError` names a text that was never embedded."""
        from safetensors.torch import load_file

        rows = []
        for text in texts:
            where = self.index.get(text_key(text))
            if where is None:
                raise EmbeddingError(f"{self.dir} has no embedding of {text[:80]!r}...: embed this split first "
                                     "(`fspo-gpo embed`).")
            chunk, row = where
            if chunk not in self._chunks:
                self._chunks[chunk] = load_file(str(self.dir / f"chunk_{chunk:05d}.safetensors"))["embeddings"]
            rows.append(self._chunks[chunk][row])
        return torch.stack(rows) if rows else torch.zeros((0, self.dim or 0))


@torch.inference_mode()
def embed_batch(model: Any, tokenizer: Any, texts: Sequence[str], pooling: str, device: torch.device) -> torch.Tensor:
    """[len(texts), D]: the pooled final hidden states of ``model`` (a fairseq2 decoder model)."""
    from fairseq2.nn.padding import pad_seqs

    encoder = tokenizer.create_encoder(mode="prompt")
    ids = [encoder(t).to(device) for t in texts]
    seqs, padding = pad_seqs(ids)
    hidden, _ = model.decode(seqs, padding)  # [B, L, D], after the last layer norm
    lengths = torch.tensor([len(i) for i in ids], device=device)
    if pooling == "last":
        return hidden[torch.arange(len(texts), device=device), lengths - 1].float()
    mask = (torch.arange(hidden.size(1), device=device)[None] < lengths[:, None]).to(hidden.dtype)
    return ((hidden * mask[..., None]).sum(1) / lengths[:, None].to(hidden.dtype)).float()


def embed_all(cache: EmbeddingCache, texts: Sequence[str], embed: Callable[[Sequence[str]], torch.Tensor], *,
              batch_size: int, chunk_size: int = 512, tick: Callable[[int], None] = lambda n: None) -> int:
    """Embed the texts the cache lacks (longest first within a chunk, to pad little); return how many."""
    todo = cache.missing(texts)
    for start in range(0, len(todo), chunk_size):
        chunk = todo[start : start + chunk_size]
        order = sorted(range(len(chunk)), key=lambda i: -len(chunk[i]))
        parts: dict[int, torch.Tensor] = {}
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            vectors = embed([chunk[i] for i in idx])
            for i, v in zip(idx, vectors):
                parts[i] = v
            tick(len(idx))
        out = torch.stack([parts[i] for i in range(len(chunk))])
        cache.add_chunk(chunk, out)
    return len(todo)
