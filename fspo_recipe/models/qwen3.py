"""The Qwen3 family (dense models: 0.6B, 1.7B, 4B, 8B) for fairseq2 0.4.6, with the packed-pairs interface.

A pre-norm decoder like llama, with three differences that fairseq2's llama cannot express:

- q and k are RMS-normalized per head (learned weights of size head_dim) before the rotary encoding (QK-norm):
  the q and k projections are :class:`HeadNormLinear`, so fairseq2's attention runs the norms in every path;
- the head dimension is its own parameter (Qwen3-4B: model_dim 2560, 32 heads of 128);
- the output projection shares the embedding's weights in the small models (``tied_embeddings``).

Rotary: theta 1e6 and no scaling. fairseq2 rotates channel pairs (2i, 2i+1); Hugging Face Qwen3 rotates
(i, i + head_dim/2). The checkpoint converter permutes the q/k projection rows and the q/k norm weights of every
head into fairseq2's layout (an RMS norm commutes with a permutation of its channels when its weight is permuted
alike, and attention scores are invariant to a permutation applied to both q and k), so fairseq2's own
RotaryEncoder serves both the ordinary path (generation included) and the packed one.

Everything the rest of the plugin needs of the family is in its record :data:`QWEN3` (config.json translation, tiny
shape, registration).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, cast

from torch import Tensor
from torch.nn import Module

from fairseq2.context import RuntimeContext
from fairseq2.data import VocabularyInfo
from fairseq2.models import AbstractModelHandler
from fairseq2.models.transformer import TransformerEmbeddingFrontend, init_final_projection
from fairseq2.models.transformer_decoder import TransformerDecoderModel
from fairseq2.nn import Linear, RMSNorm, RotaryEncoder, StandardEmbedding, TiedProjection
from fairseq2.nn.transformer import (
    GLUFeedForwardNetwork,
    StandardTransformerDecoderLayer,
    TransformerNormOrder,
    create_default_sdpa,
)
from fairseq2.typing import DataType
from fairseq2.utils.file import StandardTensorLoader

from fspo_recipe.models.family import ModelFamily, TinyShape
from fspo_recipe.models.hf_config import (HF_DECODER_NAMES, HF_LAYER_NAMES, decoder_tensors, hf_decoder_fields, refuse,
                                          require, rope_settings, rotary_pairs_from_halves, vocab_fields)
from fspo_recipe.models.hf_tokenizer import HfImportError, HfTokenizer
from fspo_recipe.models.hub import HubModelHandler
from fspo_recipe.models.transformer import FspoDecoderModel, FspoTransformerDecoder, PackedMultiheadAttention

QWEN3_FAMILY: Final = "qwen3"


@dataclass(kw_only=True)
class Qwen3Config:
    """The configuration of a Qwen3 dense model (the names of Hugging Face's config.json in brackets)."""

    model_dim: int = 2560
    """Width of the residual stream (``hidden_size``)."""

    max_seq_len: int = 40_960
    """Longest sequence the rotary table covers (``max_position_embeddings``)."""

    vocab_info: VocabularyInfo = field(
        default_factory=lambda: VocabularyInfo(size=151_936, unk_idx=None, bos_idx=151_643, eos_idx=151_645,
                                               pad_idx=151_643)
    )
    """Embedding rows (``vocab_size``) and the special token ids (bos ``<|endoftext|>``, eos ``<|im_end|>``)."""

    num_layers: int = 36
    """Decoder layers (``num_hidden_layers``)."""

    num_attn_heads: int = 32
    """Query heads (``num_attention_heads``)."""

    num_key_value_heads: int = 8
    """Key/value heads, grouped-query attention (``num_key_value_heads``)."""

    head_dim: int = 128
    """Width of one head, independent of model_dim / num_attn_heads (``head_dim``)."""

    ffn_inner_dim: int = 9728
    """Inner width of the SwiGLU feed-forward block (``intermediate_size``)."""

    rope_theta: float = 1_000_000.0
    """Rotary base (``rope_theta``)."""

    layer_norm_eps: float = 1e-6
    """Epsilon of every RMS norm, the per-head q/k norms included (``rms_norm_eps``)."""

    tied_embeddings: bool = True
    """The output projection is the embedding matrix (``tie_word_embeddings``)."""

    dropout_p: float = 0.0
    """Dropout on residual branches and attention (Qwen3 uses none)."""


def qwen3_architectures() -> dict[str, Qwen3Config]:
    """The published shapes of the dense Qwen3 models (Hugging Face ``Qwen/Qwen3-*`` config.json)."""

    def shape(model_dim: int, ffn: int, layers: int, heads: int, tied: bool) -> Qwen3Config:
        return Qwen3Config(model_dim=model_dim, ffn_inner_dim=ffn, num_layers=layers, num_attn_heads=heads,
                           num_key_value_heads=8, head_dim=128, tied_embeddings=tied)

    return {
        "qwen3_0_6b": shape(1024, 3072, 28, 16, True),
        "qwen3_1_7b": shape(2048, 6144, 28, 16, True),
        "qwen3_4b": shape(2560, 9728, 36, 32, True),
        "qwen3_8b": shape(4096, 12288, 36, 32, False),
    }


class HeadNormLinear(Linear):
    """A bias-free projection whose output is RMS-normalized head by head (Qwen3's QK-norm). As the q or k
    projection of fairseq2's attention it runs before the rotary encoding in every path: training, scoring,
    incremental decoding and the packed rows. Parameters: ``weight`` and ``norm.weight`` ([head_dim])."""

    def __init__(self, input_dim: int, output_dim: int, *, head_dim: int, eps: float) -> None:
        super().__init__(input_dim, output_dim, bias=False)
        self.head_dim = head_dim
        self.norm = RMSNorm(head_dim, bias=False, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(super().forward(x).unflatten(-1, (-1, self.head_dim))).flatten(-2)  # type: ignore[no-any-return]


def _renamed_qk_norms(module: Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """Checkpoints written before the norms moved into the projections (2026-12) name them ``self_attn.q_norm`` and
    ``self_attn.k_norm``; they load under the new names."""
    for key in [k for k in state_dict if k.startswith(prefix) and k.endswith(("self_attn.q_norm.weight",
                                                                                   "self_attn.k_norm.weight"))]:
        state_dict[key.replace("_norm.weight", "_proj.norm.weight")] = state_dict.pop(key)


class Qwen3Factory:
    """Builds a Qwen3 model from :class:`Qwen3Config` with the classes of :mod:`fspo_recipe.models.transformer`."""

    def __init__(self, config: Qwen3Config) -> None:
        self._config = config

    def create_model(self) -> TransformerDecoderModel:
        c = self._config
        embed = StandardEmbedding(num_embeddings=c.vocab_info.size, embedding_dim=c.model_dim)
        frontend = TransformerEmbeddingFrontend(embed, pos_encoder=None, no_scale=True, dropout_p=c.dropout_p)
        rotary = RotaryEncoder(c.head_dim, c.max_seq_len, theta=c.rope_theta)
        layers = [self._layer(rotary) for _ in range(c.num_layers)]
        decoder = FspoTransformerDecoder(layers, dropout_p=c.dropout_p, norm_order=TransformerNormOrder.PRE,
                                         layer_norm_factory=self._layer_norm)
        if c.tied_embeddings:
            final_proj: Module = TiedProjection(embed.weight, bias=None)
        else:
            final_proj = Linear(c.model_dim, c.vocab_info.size, bias=False, init_fn=init_final_projection)
        model = FspoDecoderModel(frontend, decoder, final_proj, max_seq_len=c.max_seq_len,  # type: ignore[arg-type]
                                 vocab_info=c.vocab_info)
        model.register_load_state_dict_pre_hook(_renamed_qk_norms)
        return model

    def _layer(self, rotary: RotaryEncoder) -> StandardTransformerDecoderLayer:
        c = self._config
        inner = c.num_attn_heads * c.head_dim
        kv = c.num_key_value_heads * c.head_dim
        norm = {"head_dim": c.head_dim, "eps": c.layer_norm_eps}
        attention = PackedMultiheadAttention(
            c.model_dim, c.num_attn_heads, num_key_value_heads=c.num_key_value_heads,
            q_proj=HeadNormLinear(c.model_dim, inner, **norm), k_proj=HeadNormLinear(c.model_dim, kv, **norm),
            v_proj=Linear(c.model_dim, kv, bias=False), output_proj=Linear(inner, c.model_dim, bias=False),
            sdpa=create_default_sdpa(attn_dropout_p=c.dropout_p), pos_encoder=rotary,
        )
        ffn = GLUFeedForwardNetwork(c.model_dim, c.ffn_inner_dim, bias=False, inner_dim_scale=1.0,
                                    inner_dim_to_multiple=1, inner_dropout_p=c.dropout_p)
        return StandardTransformerDecoderLayer(attention, encoder_decoder_attn=None, ffn=ffn, dropout_p=c.dropout_p,
                                               norm_order=TransformerNormOrder.PRE,
                                               layer_norm_factory=self._layer_norm)

    def _layer_norm(self, model_dim: int, *, device: Any = None, dtype: DataType | None = None) -> RMSNorm:
        return RMSNorm(model_dim, bias=False, eps=self._config.layer_norm_eps, device=device, dtype=dtype)


def convert_qwen3_checkpoint(checkpoint: dict[str, object], config: Qwen3Config) -> dict[str, object]:
    """Hugging Face Qwen3 tensors -> ``{"model": fairseq2 state dict}``.

    Every expected tensor must be there and every tensor must be used: a missing one (a lost shard) or an unknown one
    (another architecture) raises ``ValueError`` naming it; nothing is invented except the tied output projection,
    which *is* the embedding.
    """
    expected = {f"model.{k}": v for k, v in HF_DECODER_NAMES.items()}
    for i in range(config.num_layers):
        expected |= {f"model.layers.{i}.{k}": f"decoder.layers.{i}.{v}" for k, v in HF_LAYER_NAMES.items()}
    if not config.tied_embeddings:
        expected["lm_head.weight"] = "final_proj.weight"
    tensors = {k: v for k, v in checkpoint.items() if isinstance(v, Tensor)}
    missing = sorted(set(expected) - set(tensors))
    # A tied checkpoint may still carry lm_head.weight (equal to the embedding); any other extra key is an error.
    extra = sorted(set(tensors) - set(expected) - ({"lm_head.weight"} if config.tied_embeddings else set()))
    if missing:
        raise ValueError(f"The Qwen3 checkpoint lacks {len(missing)} tensor(s) the configuration needs, e.g. "
                         f"{missing[:3]} (a missing safetensors shard, or num_layers too large?).")
    if extra:
        raise ValueError(f"The Qwen3 checkpoint has {len(extra)} tensor(s) the configuration does not use, e.g. "
                         f"{extra[:3]} (another architecture, or num_layers too small?).")
    state: dict[str, object] = {}
    for hf_name, fs2_name in expected.items():
        tensor = tensors[hf_name]
        if hf_name.endswith(("q_proj.weight", "q_norm.weight")):
            heads = config.num_attn_heads if hf_name.endswith("q_proj.weight") else 1
            tensor = rotary_pairs_from_halves(tensor, heads)
        elif hf_name.endswith(("k_proj.weight", "k_norm.weight")):
            heads = config.num_key_value_heads if hf_name.endswith("k_proj.weight") else 1
            tensor = rotary_pairs_from_halves(tensor, heads)
        state[fs2_name] = tensor
    if config.tied_embeddings:
        state["final_proj.weight"] = state["decoder_frontend.embed.weight"]
    return {"model": state}


class _Qwen3Handler(AbstractModelHandler):
    """fairseq2's handler machinery (configs, checkpoint conversion, meta-device creation) for ``qwen3``."""

    @property
    def family(self) -> str:
        return QWEN3_FAMILY

    @property
    def kls(self) -> type[Module]:
        return TransformerDecoderModel

    def _create_model(self, config: object) -> Module:
        return Qwen3Factory(cast(Qwen3Config, config)).create_model()

    def _convert_checkpoint(self, checkpoint: dict[str, object], config: object) -> dict[str, object]:
        return convert_qwen3_checkpoint(checkpoint, cast(Qwen3Config, config))


class Qwen3ModelHandler(HubModelHandler):
    """The model handler of the ``qwen3`` family: fairseq2's machinery, plus checkpoints named as Hugging Face hub
    repositories (``checkpoint: hf://Qwen/Qwen3-4B``), fetched with ``huggingface_hub``."""


def register_qwen3(context: RuntimeContext) -> None:
    """Register the family, its architectures and its handler (idempotent)."""
    from fairseq2.models import ModelHandler

    configs = context.get_config_registry(Qwen3Config)
    for name, config in qwen3_architectures().items():
        if not configs.has(name):
            configs.register(name, lambda config=config: copy.deepcopy(config))
    handlers = context.get_registry(ModelHandler)
    if not handlers.has(QWEN3_FAMILY):
        inner = _Qwen3Handler(configs, "qwen3_4b", context.asset_download_manager,
                              StandardTensorLoader(context.file_system))
        handlers.register(QWEN3_FAMILY, Qwen3ModelHandler(inner))



def qwen3_model_config(config: Mapping[str, Any], where: Path, tokenizer: HfTokenizer) -> dict[str, Any]:
    """The ``Qwen3Config`` fields of a Qwen3 config.json; what the family cannot represent is refused."""
    for key, allowed in (("attention_bias", (False, None)), ("use_sliding_window", (False, None)),
                         ("hidden_act", ("silu",))):
        if config.get(key) not in allowed:
            raise refuse(where, key, config.get(key), f"{key} = {allowed[0]!r}")
    theta, scaling = rope_settings(config, where, 1_000_000.0)
    if scaling is not None:
        raise refuse(where, "rope_scaling", scaling, "Qwen3 without rotary scaling")
    heads, kv = require(config, where, "num_attention_heads", int), require(config, where, "num_key_value_heads", int)
    head_dim = config.get("head_dim") or require(config, where, "hidden_size", int) // heads
    if not isinstance(head_dim, int) or isinstance(head_dim, bool) or head_dim < 1:
        raise HfImportError(f"{where}: field 'head_dim' is {head_dim!r}; expected a whole number >= 1.")
    if heads % kv:
        raise HfImportError(f"{where}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv}.")
    return {
        "model_dim": require(config, where, "hidden_size", int),
        "max_seq_len": require(config, where, "max_position_embeddings", int),
        "vocab_info": vocab_fields(config, where, tokenizer),
        "num_layers": require(config, where, "num_hidden_layers", int),
        "num_attn_heads": heads,
        "num_key_value_heads": kv,
        "head_dim": head_dim,
        "ffn_inner_dim": require(config, where, "intermediate_size", int),
        "rope_theta": theta,
        "layer_norm_eps": float(require(config, where, "rms_norm_eps", (int, float))),
        "tied_embeddings": bool(config.get("tie_word_embeddings", False)),
        "dropout_p": 0.0,
    }


def qwen3_tiny_config(shape: TinyShape, vocab_info: dict[str, Any]) -> dict[str, Any]:
    """The ``Qwen3Config`` fields of a tiny Qwen3 (tied embeddings, heads ``head_dim`` wide whatever the width)."""
    return {"model_dim": shape.model_dim, "max_seq_len": shape.max_seq_len, "vocab_info": vocab_info,
            "num_layers": shape.num_layers, "num_attn_heads": shape.num_attn_heads,
            "num_key_value_heads": shape.num_key_value_heads, "head_dim": shape.head_dim,
            "ffn_inner_dim": shape.ffn_inner_dim, "tied_embeddings": True, "dropout_p": 0.0}


def qwen3_hf_config(config: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
    """config.json of ``Qwen3ForCausalLM`` for the plugin's ``Qwen3Config`` fields."""
    return {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", **hf_decoder_fields(config, shapes),
            "head_dim": config["head_dim"], "rms_norm_eps": config["layer_norm_eps"], "rope_theta": config["rope_theta"],
            "rope_scaling": None, "use_sliding_window": False, "sliding_window": None, "max_window_layers":
            config["num_layers"], "tie_word_embeddings": bool(config.get("tied_embeddings"))}


QWEN3 = ModelFamily(
    name=QWEN3_FAMILY, config_kls=Qwen3Config, create_model=lambda config: Qwen3Factory(config).create_model(),
    tiny_arch="qwen3_0_6b", tiny_config=qwen3_tiny_config,
    hf_model_type="qwen3", hf_arch="qwen3_4b", hf_config=qwen3_model_config,
    hf_tensors=lambda config: decoder_tensors(config, qk_norm=True), hf_architecture="Qwen3ForCausalLM",
    hf_export=qwen3_hf_config,
    gguf_arch="qwen3", register=register_qwen3,
)
