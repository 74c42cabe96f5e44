"""fairseq2's llama and mistral families with the packed-pairs interface, for FSPO's commands: their
:class:`~fspo_recipe.models.family.ModelFamily` records :data:`LLAMA` and :data:`MISTRAL`.

:class:`FspoLLaMAFactory` and :class:`FspoMistralFactory` build the same models as fairseq2's factories (same
modules, parameters, state-dict keys and checkpoints) from :mod:`fspo_recipe.models.transformer`'s subclasses.
Their handlers are fairseq2's with only ``_create_model`` overridden. They replace fairseq2's handlers of these two
families only while an FSPO command or unit loads its models
(:func:`fspo_recipe.models.families.packed_model_families`); other recipes in the same environment get fairseq2's
models. Llama also imports Hugging Face directories (:func:`llama_model_config`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, cast

from torch import Tensor
from torch.nn import Module

from fairseq2.config_registry import ConfigProvider
from fairseq2.context import RuntimeContext
from fairseq2.models.llama import LLaMAConfig, LLaMAFactory, LLaMAModelHandler
from fairseq2.models.mistral import MistralConfig, MistralFactory, MistralModelHandler
from fairseq2.models.transformer_decoder import TransformerDecoderModel
from fairseq2.nn import PositionEncoder, TiedProjection
from fairseq2.nn.transformer import (
    CausalAttentionMaskFactory,
    LocalAttentionStateFactory,
    MultiheadAttention,
    TransformerDecoder,
    TransformerNormOrder,
    create_default_sdpa,
)
from fairseq2.utils.file import StandardTensorLoader

from fspo_recipe.models.family import ModelFamily, TinyShape
from fspo_recipe.models.hf_config import (decoder_tensors, float32_equal, hf_decoder_fields, refuse, require,
                                          rope_settings, vocab_fields)
from fspo_recipe.models.hf_tokenizer import HfImportError, HfTokenizer
from fspo_recipe.models.hub import HubModelHandler
from fspo_recipe.models.transformer import FspoDecoderModel, FspoTransformerDecoder, PackedMultiheadAttention

# fairseq2 0.4.6's default architectures of the two families (setup/_models.py), for cards without `model_arch`.
LLAMA_DEFAULT_ARCH = "llama3_1_8b"
MISTRAL_DEFAULT_ARCH = "7b"


@dataclass(kw_only=True)
class FspoLLaMAConfig(LLaMAConfig):
    """fairseq2's ``LLaMAConfig`` with one field more: ``tied_embeddings``."""

    tied_embeddings: bool = False
    """The output projection is the embedding matrix (one parameter, one gradient), as in Hugging Face checkpoints
    with ``tie_word_embeddings`` (SmolLM2, Llama 3.2 1B/3B). fairseq2 0.4.6's llama always has a separate output
    matrix; without this field a tied checkpoint would train an untied copy that drifts apart."""


class _TiedConfigs(ConfigProvider[FspoLLaMAConfig]):
    """fairseq2's llama architectures as :class:`FspoLLaMAConfig` (untied, as fairseq2 defines them), so that a
    card's ``model_config`` and ``model.config`` may set ``tied_embeddings`` and the field travels with the
    configuration into every load path (a run's checkpoints, its resume, the other data-parallel ranks)."""

    def __init__(self, inner: ConfigProvider[LLaMAConfig]) -> None:
        self._inner = inner

    def get(self, name: str) -> FspoLLaMAConfig:
        config = self._inner.get(name)
        return FspoLLaMAConfig(**{f.name: getattr(config, f.name) for f in fields(LLaMAConfig)})

    def has(self, name: str) -> bool:
        return self._inner.has(name)

    def names(self) -> Set[str]:
        return self._inner.names()

    @property
    def config_kls(self) -> type[FspoLLaMAConfig]:
        return FspoLLaMAConfig


class _PackedFactory:
    """What FSPO's llama and mistral factories build differently from fairseq2's: :class:`FspoDecoderModel`, its
    :class:`FspoTransformerDecoder` and :class:`PackedMultiheadAttention`; every module, parameter and argument else
    as fairseq2's factory of the family makes it. A family with a sliding attention window (mistral's
    ``attn_window_len``) keeps its window mask and attention state, and rows longer than the window are not packed
    (``packed_max_len``): the packed attention is full causal attention."""

    _config: Any

    def _window(self) -> int | None:
        return getattr(self._config, "attn_window_len", None)

    def create_model(self) -> TransformerDecoderModel:
        config = self._config
        factory: Any = self  # the family's factory, which this class is mixed into
        frontend = factory.create_decoder_frontend()
        final_proj = (TiedProjection(frontend.embed.weight, bias=None) if getattr(config, "tied_embeddings", False)
                      else factory.create_final_proj())
        model = FspoDecoderModel(frontend, self.create_decoder(), final_proj,
                                 max_seq_len=config.max_seq_len, vocab_info=config.vocab_info)
        model.packed_max_len = self._window()
        return model

    def create_decoder(self) -> TransformerDecoder:
        config, window = self._config, self._window()
        factory: Any = self  # the family's factory, which this class is mixed into
        pos_encoder = factory.create_position_encoder()
        layers = [factory.create_decoder_layer(pos_encoder) for _ in range(config.num_layers)]
        # As fairseq2 0.4.6's factories: llama's decoder gets the configured dropout, mistral's its window mask.
        options: dict[str, Any] = ({"dropout_p": config.dropout_p} if window is None else
                                   {"self_attn_mask_factory": CausalAttentionMaskFactory(attn_window_len=window)})
        return FspoTransformerDecoder(layers, norm_order=TransformerNormOrder.PRE,
                                      layer_norm_factory=factory.create_layer_norm, **options)

    def create_attention(self, pos_encoder: PositionEncoder) -> MultiheadAttention:
        config, window = self._config, self._window()
        state = {} if window is None else {"state_factory": LocalAttentionStateFactory(window)}
        return PackedMultiheadAttention(config.model_dim, config.num_attn_heads,
                                        num_key_value_heads=config.num_key_value_heads,
                                        sdpa=create_default_sdpa(attn_dropout_p=config.dropout_p),
                                        pos_encoder=pos_encoder, bias=False, **state)


class FspoLLaMAFactory(_PackedFactory, LLaMAFactory):
    """fairseq2's llama factory building :class:`FspoDecoderModel` with packed-aware attention."""


class FspoMistralFactory(_PackedFactory, MistralFactory):
    """fairseq2's mistral factory building :class:`FspoDecoderModel` (rows beyond the window are not packed)."""


def tie_llama_checkpoint(checkpoint: dict[str, object]) -> dict[str, object]:
    """A Hugging Face llama checkpoint with tied embeddings (Llama 3.2 1B/3B) has no ``lm_head.weight``, which
    fairseq2 0.4.6's checkpoint conversion expects: it gets the embedding as its output projection (the same tensor
    in a model built with ``tied_embeddings``; the start of an untied copy in one built without). Other checkpoints
    are returned as they are."""
    if "model.embed_tokens.weight" in checkpoint and "lm_head.weight" not in checkpoint:
        embed = checkpoint["model.embed_tokens.weight"]
        checkpoint = {**checkpoint, "lm_head.weight": embed.clone() if isinstance(embed, Tensor) else embed}
    return checkpoint


class FspoLLaMAModelHandler(LLaMAModelHandler):
    """fairseq2's llama handler (checkpoint conversion, sharding) building :class:`FspoLLaMAFactory`'s model from
    :class:`FspoLLaMAConfig` (fairseq2's architectures, ``tied_embeddings`` added); Hugging Face checkpoints with tied
    embeddings get their output projection (see :func:`tie_llama_checkpoint`)."""

    def __init__(self, configs: ConfigProvider[LLaMAConfig], *args: Any) -> None:
        super().__init__(_TiedConfigs(configs), *args)

    def _create_model(self, config: object) -> Module:
        return FspoLLaMAFactory(cast(LLaMAConfig, config)).create_model()

    def _convert_checkpoint(self, checkpoint: dict[str, object], config: object) -> dict[str, object]:
        return super()._convert_checkpoint(tie_llama_checkpoint(checkpoint), config)


class FspoMistralModelHandler(MistralModelHandler):
    """fairseq2's mistral handler building :class:`FspoMistralFactory`'s model."""

    def _create_model(self, config: object) -> Module:
        return FspoMistralFactory(cast(MistralConfig, config)).create_model()


def _packed_handler(handler_kls: type, config_kls: type, default_arch: str) -> Callable[[RuntimeContext], object]:
    """The ``packed_handler`` of a family of fairseq2: our handler subclass made from the context's public parts,
    hub repositories (``hf://ORG/NAME``) accepted as checkpoints."""
    def make(context: RuntimeContext) -> object:
        handler = handler_kls(context.get_config_registry(config_kls), default_arch, context.asset_download_manager,
                              StandardTensorLoader(context.file_system))
        return HubModelHandler(handler)

    return make


def llama_model_config(config: Mapping[str, Any], where: Path, tokenizer: HfTokenizer) -> dict[str, Any]:
    """The fairseq2 ``LLaMAConfig`` fields of a Llama config.json; what fairseq2's llama cannot represent is refused."""
    hidden, heads = require(config, where, "hidden_size", int), require(config, where, "num_attention_heads", int)
    kv = require(config, where, "num_key_value_heads", int) if "num_key_value_heads" in config else heads
    if hidden % heads or heads % kv:
        raise HfImportError(f"{where}: hidden_size {hidden}, num_attention_heads {heads} and num_key_value_heads {kv} "
                            "do not divide (hidden_size by heads, heads by key/value heads).")
    for key, allowed in (("attention_bias", (False, None)), ("mlp_bias", (False, None)), ("hidden_act", ("silu",))):
        if config.get(key) not in allowed:
            raise refuse(where, key, config.get(key), f"{key} = {allowed[0]!r}")
    if config.get("head_dim") not in (None, hidden // heads):
        raise refuse(where, "head_dim", config.get("head_dim"), f"head_dim = hidden_size / num_attention_heads "
                      f"({hidden // heads}) in fairseq2's llama")
    if not float32_equal(float(config.get("rms_norm_eps", 1e-5)), 1e-5):
        raise refuse(where, "rms_norm_eps", config.get("rms_norm_eps"), "1e-05 (fairseq2's llama RMSNorm)")
    out: dict[str, Any] = {
        "model_dim": hidden,
        "max_seq_len": require(config, where, "max_position_embeddings", int),
        "vocab_info": vocab_fields(config, where, tokenizer),
        "num_layers": require(config, where, "num_hidden_layers", int),
        "num_attn_heads": heads,
        "num_key_value_heads": kv,
        "ffn_inner_dim": require(config, where, "intermediate_size", int),
        "ffn_inner_dim_scale": 1.0,
        "ffn_inner_dim_multiplier": 1.0,
        "ffn_inner_dim_to_multiple": 1,
        "dropout_p": 0.0,
        "tied_embeddings": bool(config.get("tie_word_embeddings", False)),
    }
    out["rope_theta"], scaling = rope_settings(config, where, 10_000.0)
    if scaling is None:
        out["use_scaled_rope"] = False
    elif isinstance(scaling, dict) and scaling.get("rope_type", scaling.get("type")) == "llama3":
        out["use_scaled_rope"] = True
        out["rope_scaling"] = {"factor": float(scaling["factor"]),
                               "frequency_factors": [float(scaling["low_freq_factor"]),
                                                     float(scaling["high_freq_factor"])],
                               "original_context_length": int(scaling["original_max_position_embeddings"])}
    else:
        raise refuse(where, "rope_scaling", scaling, "no scaling or llama3 scaling")
    return out


def _tiny_fields(shape: TinyShape, vocab_info: dict[str, Any]) -> dict[str, Any]:
    if shape.model_dim % shape.num_attn_heads:
        raise ValueError(f"the number of heads ({shape.num_attn_heads}) must divide the model width "
                         f"({shape.model_dim}): a llama-style head is model_dim / num_heads wide")
    return {"model_dim": shape.model_dim, "max_seq_len": shape.max_seq_len, "num_layers": shape.num_layers,
            "num_attn_heads": shape.num_attn_heads, "num_key_value_heads": shape.num_key_value_heads,
            "ffn_inner_dim": shape.ffn_inner_dim, "dropout_p": 0.0, "vocab_info": vocab_info}


def llama_tiny_config(shape: TinyShape, vocab_info: dict[str, Any]) -> dict[str, Any]:
    """The ``LLaMAConfig`` fields of a tiny llama (the feed-forward width exactly ``ffn_inner_dim``)."""
    return {**_tiny_fields(shape, vocab_info), "ffn_inner_dim_scale": 1.0, "ffn_inner_dim_multiplier": 1.0,
            "ffn_inner_dim_to_multiple": 1}


def mistral_tiny_config(shape: TinyShape, vocab_info: dict[str, Any]) -> dict[str, Any]:
    """The ``MistralConfig`` fields of a tiny mistral (its attention window the whole sequence)."""
    return {**_tiny_fields(shape, vocab_info), "attn_window_len": shape.max_seq_len}


def llama_hf_config(config: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
    """config.json of ``LlamaForCausalLM`` for fairseq2's llama configuration fields (``FspoLLaMAConfig``)."""
    heads = config["num_attn_heads"]
    scaling = None
    if config.get("use_scaled_rope"):
        rs = config["rope_scaling"]
        scaling = {"rope_type": "llama3", "factor": rs["factor"], "low_freq_factor": rs["frequency_factors"][0],
                   "high_freq_factor": rs["frequency_factors"][1],
                   "original_max_position_embeddings": rs["original_context_length"]}
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **hf_decoder_fields(config, shapes),
            "head_dim": config["model_dim"] // heads, "rms_norm_eps": 1e-5, "rope_theta": config["rope_theta"],
            "rope_scaling": scaling, "mlp_bias": False, "tie_word_embeddings": bool(config.get("tied_embeddings"))}




def mistral_hf_config(config: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
    """config.json of ``MistralForCausalLM`` for fairseq2's mistral configuration fields (rotary base 10,000 and
    RMSNorm epsilon 1e-5, as fairseq2 0.4.6 builds it; its attention window as ``sliding_window``)."""
    return {"architectures": ["MistralForCausalLM"], "model_type": "mistral", **hf_decoder_fields(config, shapes),
            "head_dim": config["model_dim"] // config["num_attn_heads"], "rms_norm_eps": 1e-5, "rope_theta": 10_000.0,
            "sliding_window": config.get("attn_window_len"), "tie_word_embeddings": False}


LLAMA = ModelFamily(
    name="llama", config_kls=FspoLLaMAConfig, create_model=lambda config: FspoLLaMAFactory(config).create_model(),
    tiny_arch="llama3_2_1b", tiny_config=llama_tiny_config,
    hf_model_type="llama", hf_arch="llama3_2_1b", hf_config=llama_model_config,
    hf_tensors=lambda config: decoder_tensors(config, qk_norm=False), hf_architecture="LlamaForCausalLM",
    hf_export=llama_hf_config, gguf_arch="llama", gguf_rope_pairs=True,
    packed_handler=_packed_handler(FspoLLaMAModelHandler, LLaMAConfig, LLAMA_DEFAULT_ARCH),
)

MISTRAL = ModelFamily(
    name="mistral", config_kls=MistralConfig, create_model=lambda config: FspoMistralFactory(config).create_model(),
    tiny_arch=MISTRAL_DEFAULT_ARCH, tiny_config=mistral_tiny_config, hf_export=mistral_hf_config,
    hf_architecture="MistralForCausalLM",
    packed_handler=_packed_handler(FspoMistralModelHandler, MistralConfig, MISTRAL_DEFAULT_ARCH),
)
