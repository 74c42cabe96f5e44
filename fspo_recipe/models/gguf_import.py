"""``fspo-gguf-card``: a GGUF file (llama.cpp's format) of a family this plugin represents -> a Hugging Face model
directory and its asset card.

    fspo-gguf-card SmolLM2-135M-Instruct.Q4_1.gguf --name smollm2_135m_instruct --out cards/
    fairseq2 lm preference_finetune runs/sft --preset fspo_sft \\
        --config common.assets.extra_path=cards model.name=smollm2_135m_instruct ...

The directory ``OUT/NAME/`` holds ``config.json`` (from the GGUF metadata), ``model.safetensors`` (every tensor
dequantized to float32 by the ``gguf`` package itself, q/k rows put back into Hugging Face's layout where llama.cpp
permuted them), ``tokenizer.json`` (the byte-level BPE vocabulary, merges and pre-tokenizer of the file) and
``tokenizer_config.json`` (special tokens, chat template); the card ``OUT/NAME.yaml`` is written by the checks of
``fspo-hf-card`` and notes the source file and its quantization. Quantized weights stay what they are: the import
makes them loadable and trainable in float, it does not recover the original model's weights. Quantization types
the ``gguf`` package cannot dequantize, tokenizer types other than byte-level BPE and tensors without a place in the
model are refused by name.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np

from fspo_recipe.cli import run_command
from fspo_recipe.files import Terminated, atomic_directory, atomic_file
from fspo_recipe.models.families import gguf_families
from fspo_recipe.models.family import ModelFamily
from fspo_recipe.models.hf import hf_card
from fspo_recipe.models import hf_config
from fspo_recipe.models.hf_config import rotary_halves_from_pairs
from fspo_recipe.models.hf_tokenizer import HfImportError

_TOP: Final = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
               "output.weight": "lm_head.weight"}
_LAYER: Final = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
                 "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                 "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
                 "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}

# The pre-tokenizer of each `tokenizer.ggml.pre` (llama.cpp's llama-vocab.cpp): how the text is split before BPE.
_LLAMA3_SPLIT: Final = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                        r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT: Final = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                       r"|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZERS: Final = {"default": None, "gpt2": None, "smollm": "digits", "llama-bpe": _LLAMA3_SPLIT,
                         "llama3": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT}
"""GGUF pre-tokenizer name -> None (GPT-2's own split), ``digits`` (every digit alone, then GPT-2's split), or the
split pattern (then byte-level without its own split)."""

CONTROL, USER_DEFINED = 3, 4  # llama.cpp's token types


class GgufFile:
    """The metadata and tensors of a GGUF file, read with the ``gguf`` package (memory-mapped)."""

    def __init__(self, path: Path) -> None:
        import gguf

        self.path = path
        if not path.is_file():
            raise HfImportError(f"{path} does not exist (expected a GGUF file).")
        try:
            self._reader = gguf.GGUFReader(path)
        except (ValueError, OSError, IndexError) as ex:
            raise HfImportError(f"{path} is not a readable GGUF file ({ex}).") from None
        self.tensors = {t.name: t for t in self._reader.tensors}

    def get(self, key: str, default: Any = None) -> Any:
        field = self._reader.fields.get(key)
        return default if field is None else field.contents()

    def require(self, key: str, kind: type | tuple[type, ...]) -> Any:
        """The metadata ``key`` when it is a ``kind``, checked as config.json fields are (:func:`hf_config.require`)."""
        return hf_config.require(self, self.path, key, kind)  # type: ignore[arg-type]  (it needs only .get)

    def dequantized(self, name: str) -> np.ndarray:
        """The tensor ``name`` as float32, as the ``gguf`` package dequantizes it ([rows, columns] as in PyTorch)."""
        from gguf import quants

        tensor = self.tensors[name]
        try:
            return np.ascontiguousarray(quants.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        except NotImplementedError:
            raise HfImportError(f"{self.path}: tensor '{name}' is quantized as {tensor.tensor_type.name}, which the "
                                "gguf package cannot dequantize; use a file of another quantization.") from None


def _float32_value(value: float) -> float:
    """The shortest decimal of a float32 value (GGUF stores 1e-05 as 9.999999747378752e-06)."""
    return float(str(np.float32(value)))


def family_of(file: GgufFile) -> ModelFamily:
    families, arch = gguf_families(), file.require("general.architecture", str)
    if arch not in families:
        raise HfImportError(f"{file.path}: architecture '{arch}' is not supported; supported: {', '.join(families)}.")
    return families[arch]


def model_config(file: GgufFile, family: ModelFamily, vocab_size: int, bos: int | None, eos: int | None
                 ) -> dict[str, Any]:
    """The config.json of the model in ``file``."""
    arch = family.gguf_arch
    hidden, heads = file.require(f"{arch}.embedding_length", int), file.require(f"{arch}.attention.head_count", int)
    config: dict[str, Any] = {
        "architectures": [family.hf_architecture], "model_type": family.hf_model_type,
        "hidden_size": hidden, "intermediate_size": file.require(f"{arch}.feed_forward_length", int),
        "num_hidden_layers": file.require(f"{arch}.block_count", int), "num_attention_heads": heads,
        "num_key_value_heads": file.get(f"{arch}.attention.head_count_kv", heads),
        "head_dim": file.get(f"{arch}.attention.key_length", hidden // heads),
        "max_position_embeddings": file.require(f"{arch}.context_length", int),
        "rms_norm_eps": _float32_value(file.require(f"{arch}.attention.layer_norm_rms_epsilon", float)),
        "rope_theta": _float32_value(file.get(f"{arch}.rope.freq_base", 10_000.0)),
        "vocab_size": vocab_size, "hidden_act": "silu", "attention_bias": False,
        "tie_word_embeddings": "output.weight" not in file.tensors, "torch_dtype": "float32",
        "bos_token_id": bos, "eos_token_id": eos,
    }
    scaling = file.get(f"{arch}.rope.scaling.type")
    if scaling not in (None, "none") or "rope_freqs.weight" in file.tensors:
        raise HfImportError(f"{file.path}: rotary scaling ({scaling or 'rope_freqs.weight'}) is not imported; this "
                            "plugin imports GGUF files without it.")
    return config


def hf_tensors(file: GgufFile, family: ModelFamily, config: dict[str, Any]) -> dict[str, np.ndarray]:
    """Every tensor under its Hugging Face name, float32; a tensor without a place is refused by name."""
    out: dict[str, np.ndarray] = {}
    for name in file.tensors:
        if name in _TOP:
            hf_name = _TOP[name]
        else:
            parts = name.split(".")
            if len(parts) != 4 or parts[0] != "blk" or parts[2] not in _LAYER or parts[3] != "weight":
                raise HfImportError(f"{file.path}: tensor '{name}' has no place in a {family.name} model.")
            hf_name = f"model.layers.{parts[1]}.{_LAYER[parts[2]]}.weight"
        w = file.dequantized(name)
        if family.gguf_rope_pairs and hf_name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = config["num_attention_heads"] if "q_proj" in hf_name else config["num_key_value_heads"]
            w = rotary_halves_from_pairs(w, heads)  # llama.cpp permuted them into pairs
        out[hf_name] = w
    return out


def tokenizer_files(file: GgufFile) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tokenizer.json, tokenizer_config.json) of the file's byte-level BPE tokenizer."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    kind = file.require("tokenizer.ggml.model", str)
    if kind != "gpt2":
        raise HfImportError(f"{file.path}: tokenizer '{kind}' is not imported; this plugin imports byte-level BPE "
                            "tokenizers (tokenizer.ggml.model gpt2: Llama 3, Qwen, SmolLM).")
    pre = file.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise HfImportError(f"{file.path}: pre-tokenizer '{pre}' is not known; known: {', '.join(PRE_TOKENIZERS)}.")
    tokens: list[str] = list(file.require("tokenizer.ggml.tokens", list))
    types: list[int] = list(file.get("tokenizer.ggml.token_type", [1] * len(tokens)))
    merges = [tuple(m.split(" ", 1)) for m in file.require("tokenizer.ggml.merges", list)]
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        repeated = next(t for t, n in Counter(tokens).items() if n > 1)
        raise HfImportError(f"{file.path}: the vocabulary has token {repeated!r} more than once.")
    tokenizer = Tokenizer(models.BPE(vocab, merges, fuse_unk=False))
    split = PRE_TOKENIZERS[pre]
    if split is None:
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    elif split == "digits":
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                           pre_tokenizers.ByteLevel(add_prefix_space=False)])
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                  for t, kind_ in zip(tokens, types) if kind_ == CONTROL])
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False)
                          for t, kind_ in zip(tokens, types) if kind_ == USER_DEFINED])
    special = {name: file.get(f"tokenizer.ggml.{key}_token_id")
               for name, key in (("bos", "bos"), ("eos", "eos"), ("unk", "unknown"), ("pad", "padding"))}
    add_bos = bool(file.get("tokenizer.ggml.add_bos_token", False)) and special["bos"] is not None
    post: list[Any] = [processors.ByteLevel(trim_offsets=False)]
    if add_bos:
        bos = tokens[special["bos"]]
        post.append(processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                                  special_tokens=[(bos, special["bos"])]))
    tokenizer.post_processor = processors.Sequence(post)
    config: dict[str, Any] = {f"{name}_token": tokens[idx] for name, idx in special.items()
                              if isinstance(idx, int) and 0 <= idx < len(tokens)}
    config["add_bos_token"] = add_bos
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    template = file.get("tokenizer.chat_template")
    if isinstance(template, str):
        config["chat_template"] = template
    return json.loads(tokenizer.to_str()), config


def import_gguf(path: Path, name: str, out: Path) -> Path:
    """Write ``out/NAME/`` (the Hugging Face directory) and ``out/NAME.yaml`` (its card); return the card's path."""
    from safetensors.numpy import save_file

    path = path.expanduser().resolve()
    file = GgufFile(path)
    family = family_of(file)
    if out.exists() and not out.is_dir():
        raise HfImportError(f"--out {out} is a file, not a directory.")
    tokenizer, tokenizer_config = tokenizer_files(file)
    vocab_size = file.get(f"{family.gguf_arch}.vocab_size") or len(file.require("tokenizer.ggml.tokens", list))
    config = model_config(file, family, int(vocab_size), file.get("tokenizer.ggml.bos_token_id"),
                          file.get("tokenizer.ggml.eos_token_id"))
    tensors = hf_tensors(file, family, config)
    quantization = dict(sorted(Counter(t.tensor_type.name for t in file.tensors.values()).items()))
    directory = out / name
    with atomic_directory(directory) as tmp:
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (tmp / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False) + "\n")
        (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False) + "\n")
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt", "source": path.name})
        card = hf_card(tmp, name)  # every check of fspo-hf-card, on the new directory before it is in place
    card["checkpoint"] = card["tokenizer"] = str(directory.resolve())
    card["source"] = {"gguf": str(path), "tensor_types": quantization, "import_format": IMPORT_FORMAT}
    import yaml

    card_path = out / f"{name}.yaml"
    with atomic_file(card_path) as fp:
        fp.write(f"{WRITTEN_BY}{path}`: its weights dequantized to float32 "
                 f"({', '.join(f'{k} x{v}' for k, v in quantization.items())}).\n")
        fp.write(yaml.safe_dump(card, sort_keys=False))
    return card_path


WRITTEN_BY: Final = "# Written by `fspo-gguf-card "

IMPORT_FORMAT: Final = 2
"""Raised whenever an import writes a card that older imports would not match (2: llama cards say
``tied_embeddings``); :func:`current_import` tells a cached import of an older format."""


def current_import(card: Path) -> bool:
    """Whether ``card`` is an import of this plugin's :data:`IMPORT_FORMAT` (a cache may reuse it as it is)."""
    import yaml

    try:
        data = yaml.safe_load(card.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    source = data.get("source") if isinstance(data, dict) else None
    return isinstance(source, dict) and source.get("import_format") == IMPORT_FORMAT


def written_by_us(card: Path) -> bool:
    """Whether ``card`` is a card this command wrote (its first line says so)."""
    try:
        with card.open(encoding="utf-8") as fp:
            return fp.readline().startswith(WRITTEN_BY)
    except (OSError, UnicodeDecodeError):
        return False


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fspo-gguf-card", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("gguf", type=Path, help="a GGUF file of a llama or qwen3 model")
    parser.add_argument("--name", required=True, help="the asset name to give the model (model.name=NAME)")
    parser.add_argument("--out", type=Path, required=True,
                        help="the card directory: NAME.yaml and the model directory NAME/ are written into it")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT/NAME and OUT/NAME.yaml if they exist")
    args = parser.parse_args(argv)

    def body() -> int:
        card = args.out / f"{args.name}.yaml"
        for existing in (args.out / args.name, card):
            if existing.exists() and not args.overwrite:
                raise HfImportError(f"{existing} exists; pass --overwrite to replace it.")
        if args.overwrite and (args.out / args.name).exists() and not written_by_us(card):
            raise HfImportError(f"{args.out / args.name} was not written by fspo-gguf-card (its card {card} does not "
                                "say so); not replacing it.")
        card = import_gguf(args.gguf, args.name, args.out)
        print(f"wrote {card} and {args.out / args.name}: use --config common.assets.extra_path={args.out} "
              f"model.name={args.name}")
        return 0

    return run_command("fspo-gguf-card", body, {(HfImportError, OSError): 1, Terminated: 143})


if __name__ == "__main__":
    raise SystemExit(main())
