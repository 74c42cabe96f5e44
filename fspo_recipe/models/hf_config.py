"""What translating a Hugging Face ``config.json`` into a family's fairseq2 configuration needs, whatever the family:
typed field look-ups that fail naming the file and field, the rotary settings of either config.json style, the
vocabulary fields, and the tensor names and shapes of a llama-style decoder. Each family's translator lives in its
own module (:mod:`fspo_recipe.models.llama`, :mod:`fspo_recipe.models.qwen3`)."""

from __future__ import annotations

import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from fspo_recipe.models.hf_tokenizer import HfImportError, HfTokenizer


def require(config: Mapping[str, Any], where: Path, key: str, kind: type | tuple[type, ...]) -> Any:
    """``config[key]`` when it is a ``kind`` (a whole number >= 1 for ``int``); else an error naming file and field."""
    value = config.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise HfImportError(f"{where}: field '{key}' is missing or not a {getattr(kind, '__name__', kind)}.")
    if kind is int and value < 1:
        raise HfImportError(f"{where}: field '{key}' is {value}; expected a whole number >= 1.")
    return value


def refuse(where: Path, key: str, value: object, expected: str) -> HfImportError:
    """The error for a config.json value that the family cannot represent exactly."""
    return HfImportError(f"{where}: '{key}' is {value!r}; this plugin represents only {expected} exactly.")


def float32_equal(value: float, expected: float) -> bool:
    """``value`` is ``expected`` up to float32 rounding (a config.json written from float32 storage, as GGUF's,
    holds 1e-05 as 9.999999747378752e-06); everything else must be equal exactly."""
    def rounded(x: float) -> float:
        return struct.unpack("f", struct.pack("f", x))[0]

    return value == expected or rounded(value) == rounded(expected)


def rotary_pairs_from_halves(w: Any, num_heads: int) -> Any:
    """Reorder the output rows of ``w`` ([num_heads * head_dim, ...], or a [head_dim] norm weight with one head) of
    every head from Hugging Face's rotate-half layout (i, i + head_dim/2) into the rotary pair layout (2i, 2i+1) of
    fairseq2 and llama.cpp's llama files. A tensor or a numpy array."""
    head_dim = w.shape[0] // num_heads
    return w.reshape(num_heads, 2, head_dim // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def rotary_halves_from_pairs(w: Any, num_heads: int) -> Any:
    """The inverse of :func:`rotary_pairs_from_halves`."""
    head_dim = w.shape[0] // num_heads
    return w.reshape(num_heads, head_dim // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def rope_settings(config: Mapping[str, Any], where: Path, default_theta: float) -> tuple[float, dict[str, Any] | None]:
    """(rotary base, scaling parameters or None) from either config.json style: ``rope_theta`` and ``rope_scaling``
    (the published models), or ``rope_parameters`` (written by transformers 5)."""
    params = config.get("rope_parameters")
    if isinstance(params, dict):
        theta = params.get("rope_theta", default_theta)
        kind = params.get("rope_type", "default")
        scaling = None if kind == "default" else {**params, "rope_type": kind}
    else:
        theta = config.get("rope_theta", default_theta)
        scaling = config.get("rope_scaling")
    if not isinstance(theta, (int, float)) or isinstance(theta, bool):
        raise HfImportError(f"{where}: field 'rope_theta' is not a number.")
    if scaling is not None and not isinstance(scaling, dict):
        raise HfImportError(f"{where}: field 'rope_scaling' is not an object.")
    return float(theta), scaling


def vocab_fields(config: Mapping[str, Any], where: Path, tokenizer: HfTokenizer) -> dict[str, Any]:
    """The ``vocab_info`` fields: the embedding's rows from config.json, the special tokens from the tokenizer."""
    size = require(config, where, "vocab_size", int)
    info = tokenizer.vocab_info
    return {"size": size, "unk_idx": info.unk_idx, "bos_idx": info.bos_idx, "eos_idx": info.eos_idx,
            "pad_idx": info.pad_idx}


# The tensor names of a llama-style decoder (llama, mistral, qwen3; the q/k norms are Qwen3's): Qwen3's checkpoint
# conversion reads them one way, fspo-export-hf writes them the other.
HF_DECODER_NAMES: Final = {
    # Hugging Face name (after "model.") -> fairseq2 name, outside the layers
    "embed_tokens.weight": "decoder_frontend.embed.weight",
    "norm.weight": "decoder.layer_norm.weight",
}
HF_LAYER_NAMES: Final = {
    # Hugging Face name -> fairseq2 name, in every layer (after "model.layers.N." / "decoder.layers.N.")
    "self_attn.q_proj.weight": "self_attn.q_proj.weight",
    "self_attn.k_proj.weight": "self_attn.k_proj.weight",
    "self_attn.v_proj.weight": "self_attn.v_proj.weight",
    "self_attn.o_proj.weight": "self_attn.output_proj.weight",
    "self_attn.q_norm.weight": "self_attn.q_proj.norm.weight",
    "self_attn.k_norm.weight": "self_attn.k_proj.norm.weight",
    "mlp.gate_proj.weight": "ffn.gate_proj.weight",
    "mlp.up_proj.weight": "ffn.inner_proj.weight",
    "mlp.down_proj.weight": "ffn.output_proj.weight",
    "input_layernorm.weight": "self_attn_layer_norm.weight",
    "post_attention_layernorm.weight": "ffn_layer_norm.weight",
}


def decoder_tensors(model_config: Mapping[str, Any], *, qk_norm: bool) -> dict[str, tuple[int, ...]]:
    """The name and shape of every tensor of a Hugging Face llama-style decoder with ``model_config`` (fairseq2
    field names), ``lm_head.weight`` included (tied models may leave it out)."""
    dim, layers, ffn = model_config["model_dim"], model_config["num_layers"], model_config["ffn_inner_dim"]
    heads, kv = model_config["num_attn_heads"], model_config["num_key_value_heads"]
    head_dim = model_config.get("head_dim") or dim // heads
    vocab = model_config["vocab_info"]["size"]
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, dim), "model.norm.weight": (dim,),
                                          "lm_head.weight": (vocab, dim)}
    for i in range(layers):
        layer = {"self_attn.q_proj.weight": (heads * head_dim, dim), "self_attn.k_proj.weight": (kv * head_dim, dim),
                 "self_attn.v_proj.weight": (kv * head_dim, dim), "self_attn.o_proj.weight": (dim, heads * head_dim),
                 "mlp.gate_proj.weight": (ffn, dim), "mlp.up_proj.weight": (ffn, dim),
                 "mlp.down_proj.weight": (dim, ffn),
                 "input_layernorm.weight": (dim,), "post_attention_layernorm.weight": (dim,)}
        if qk_norm:
            layer.update({"self_attn.q_norm.weight": (head_dim,), "self_attn.k_norm.weight": (head_dim,)})
        shapes.update({f"model.layers.{i}.{name}": shape for name, shape in layer.items()})
    return shapes


def hf_decoder_fields(config: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
    """The fields every decoder's config.json has; the feed-forward width is read from the weights (fairseq2's llama
    derives it from scale, multiplier and rounding)."""
    vocab = config["vocab_info"]
    return {"hidden_size": config["model_dim"], "intermediate_size": shapes["model.layers.0.mlp.gate_proj.weight"][0],
            "num_hidden_layers": config["num_layers"], "num_attention_heads": config["num_attn_heads"],
            "num_key_value_heads": config["num_key_value_heads"], "hidden_act": "silu",
            "max_position_embeddings": config["max_seq_len"], "vocab_size": config["vocab_info"]["size"],
            "attention_bias": False, "attention_dropout": 0.0, "initializer_range": 0.02, "use_cache": True,
            "bos_token_id": vocab.get("bos_idx"), "eos_token_id": vocab.get("eos_idx"),
            "pad_token_id": vocab.get("pad_idx")}
