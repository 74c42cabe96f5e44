"""Tiny CPU assets: a random llama checkpoint, a byte-level tokenizer and their asset card, from a seed.

Tests and the quick start train these in seconds on a CPU, offline. The tokenizer is a tiktoken file of the 256
single bytes, loaded by fairseq2 as a llama 3 tokenizer: it adds 256 special tokens, so the vocabulary is 512.
With ``--bpe-merges N --bpe-from FILES`` it also has up to N tokens learned from the training texts (words, as a
real tokenizer has them; see fspo_recipe/models/bpe.py), and the special tokens come after those.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from fspo_recipe.files import atomic_file
from fspo_recipe.models.bpe import corpus_texts, learn_bpe, tiktoken_text
from fspo_recipe.models.families import FAMILIES, model_family

TOKENIZER_FILE = "tokenizer.model"
CHECKPOINT_FILE = "model.pt"
CARD_FILE = "tiny_model.yaml"

# fairseq2's llama 3 tokenizer numbers its 256 special tokens after the tokens of the tiktoken file: begin of
# text first, end of text second, the padding token fifth.
NUM_SPECIAL_TOKENS = 256
BOS_OFFSET, EOS_OFFSET, PAD_OFFSET = 0, 1, 4
BYTE_VOCAB_SIZE = 256 + NUM_SPECIAL_TOKENS
BOS_IDX, EOS_IDX, PAD_IDX = 256 + BOS_OFFSET, 256 + EOS_OFFSET, 256 + PAD_OFFSET


@dataclass(frozen=True)
class TinyModelSpec:
    """The shape of the tiny model (a llama, or a qwen3)."""

    family: str = "llama"
    """A family of :data:`fspo_recipe.models.families.FAMILIES` (llama, mistral, qwen3)."""

    head_dim: int = 32
    """Width of a head where the family has one of its own (qwen3; on purpose not model_dim / num_attn_heads = 16)."""

    model_dim: int = 64
    """Width of the model."""

    num_layers: int = 2
    """Number of decoder layers."""

    num_attn_heads: int = 4
    """Number of attention heads."""

    num_key_value_heads: int = 2
    """Number of key/value heads (grouped-query attention, as in llama 3)."""

    ffn_inner_dim: int = 256
    """Inner width of the feed-forward layers."""

    max_seq_len: int = 8192
    """Longest sequence the rotary encoder is built for."""

    text_tokens: int = 256
    """Tokens of the tiktoken file: the 256 bytes, plus any learned BPE tokens."""

    @property
    def vocab_size(self) -> int:
        return self.text_tokens + NUM_SPECIAL_TOKENS

    def model_config(self) -> dict[str, object]:
        """The fields of the family's configuration that the card overrides; ``ValueError`` for a shape the family
        cannot build."""
        n = self.text_tokens
        vocab_info = {"size": self.vocab_size, "unk_idx": None, "bos_idx": n + BOS_OFFSET, "eos_idx": n + EOS_OFFSET,
                      "pad_idx": n + PAD_OFFSET}
        return model_family(self.family).tiny_config(self, vocab_info)

    def create_model(self) -> torch.nn.Module:
        """The model of this shape, built by the family's FSPO factory (the packed-pairs classes)."""
        from fairseq2.utils.structured import structure

        family = model_family(self.family)
        return family.create_model(structure(self.model_config(), family.config_kls))


def card_text(name: str, spec: TinyModelSpec) -> str:
    """The asset card of the tiny model; paths are relative to the card's directory."""
    import yaml

    card = {
        "name": name,
        "model_family": spec.family,
        "model_arch": model_family(spec.family).tiny_arch,
        "model_config": {"_set_": spec.model_config()},
        "checkpoint": CHECKPOINT_FILE,
        "tokenizer": TOKENIZER_FILE,
        "tokenizer_family": "llama",
        "use_v2_tokenizer": True,
    }
    header = f"# Written by `fspo-tiny-assets`: a random tiny {spec.family} for CPU tests, not a trained model.\n"
    return header + yaml.safe_dump(card, sort_keys=False)


def make_tiny_state_dict(spec: TinyModelSpec, seed: int) -> dict[str, torch.Tensor]:
    """Build the tiny model from ``seed`` and return its state dict (float32)."""
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = spec.create_model()
    finally:
        torch.random.set_rng_state(generator_state)
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def write_tiny_assets(out_dir: Path, *, seed: int = 0, name: str = "fspo_tiny_llama", spec: TinyModelSpec | None = None,
                      tokens: list[bytes] | None = None) -> Path:
    """Write checkpoint, tokenizer and card into ``out_dir``; return the card's path. Same seed, same bytes.

    ``tokens``: the tokenizer's vocabulary in rank order (fspo_recipe.models.bpe.learn_bpe); default the 256 bytes.
    """
    tokens = [bytes([b]) for b in range(256)] if tokens is None else tokens
    spec = replace(spec or TinyModelSpec(), text_tokens=len(tokens))
    out_dir.mkdir(parents=True, exist_ok=True)

    with atomic_file(out_dir / TOKENIZER_FILE) as fp:
        fp.write(tiktoken_text(tokens))

    state_dict = make_tiny_state_dict(spec, seed)
    with atomic_file(out_dir / CHECKPOINT_FILE, "wb") as fp:
        # The trainer's own format: loads without key conversion (`fs2`).
        torch.save({"model": state_dict, "model_key": "model", "fs2": True}, fp)

    card = out_dir / CARD_FILE
    with atomic_file(card) as fp:
        fp.write(card_text(name, spec))
    return card


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fspo-tiny-assets",
        description="Write a tiny random llama checkpoint, a byte-level tokenizer and their fairseq2 asset card "
        "into OUT_DIR (deterministic from --seed). Use them with `--config common.assets.extra_path=OUT_DIR "
        "model.name=NAME`.",
    )
    parser.add_argument("out_dir", type=Path, help="directory to write into (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the weights (default: 0)")
    parser.add_argument("--name", default="fspo_tiny_llama", help="asset name of the model (default: fspo_tiny_llama)")
    parser.add_argument("--model-dim", type=int, default=TinyModelSpec.model_dim, help="model width (default: 64)")
    parser.add_argument("--num-layers", type=int, default=TinyModelSpec.num_layers, help="decoder layers (default: 2)")
    parser.add_argument("--num-heads", type=int, default=TinyModelSpec.num_attn_heads,
                        help="attention heads (default: 4)")
    parser.add_argument("--kv-heads", type=int, default=TinyModelSpec.num_key_value_heads,
                        help="key/value heads, dividing --num-heads (default: 2)")
    parser.add_argument("--family", choices=list(FAMILIES), default="llama", help="model family (default: llama)")
    parser.add_argument("--bpe-merges", type=int, default=0, metavar="N",
                        help="add up to N BPE tokens learned from --bpe-from, e.g. the words of the training data "
                        "(default: 0, one token per byte)")
    parser.add_argument("--bpe-from", type=Path, nargs="+", default=[], metavar="FILE",
                        help="texts to learn the BPE tokens from: fairseq2 JSONL (src, tgt, tgt_chosen, "
                        "tgt_rejected fields) or plain text lines")
    args = parser.parse_args(argv)
    if args.bpe_merges < 0:
        parser.error(f"--bpe-merges must be >= 0, got {args.bpe_merges}")
    if bool(args.bpe_merges) != bool(args.bpe_from):
        parser.error("--bpe-merges N and --bpe-from FILE go together")
    missing = [str(p) for p in args.bpe_from if not p.is_file()]
    if missing:
        parser.error(f"--bpe-from: no such file: {', '.join(missing)}")
    if args.num_heads % args.kv_heads:
        parser.error(f"--kv-heads ({args.kv_heads}) must divide --num-heads ({args.num_heads})")
    blocking = next((p for p in [args.out_dir, *args.out_dir.parents] if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        print(f"fspo-tiny-assets: {blocking} is a file, not a directory; give a directory to write into.",
              file=sys.stderr)
        return 2

    spec = TinyModelSpec(family=args.family, model_dim=args.model_dim, num_layers=args.num_layers,
                         num_attn_heads=args.num_heads, num_key_value_heads=args.kv_heads)
    try:
        spec.model_config()
    except ValueError as err:
        parser.error(f"--family {args.family}: {err}")
    tokens = None
    if args.bpe_merges:
        try:
            tokens = learn_bpe(corpus_texts(args.bpe_from), args.bpe_merges)
        except ValueError as err:
            print(f"fspo-tiny-assets: {err}", file=sys.stderr)
            return 2
        spec = replace(spec, text_tokens=len(tokens))
    card = write_tiny_assets(args.out_dir, seed=args.seed, name=args.name, spec=spec, tokens=tokens)
    print(f"wrote {card} ({spec.family} model '{args.name}', {spec.num_layers} layers, dim {spec.model_dim}, "
          f"{spec.num_attn_heads} heads ({spec.num_key_value_heads} key/value), vocab {spec.vocab_size}"
          f"{f', {spec.text_tokens - 256} BPE tokens' if tokens else ''})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
