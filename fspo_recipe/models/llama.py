"""fairseq2's llama and mistral families with the packed-pairs interface, for FSPO's commands.

:class:`FspoLLaMAFactory` and :class:`FspoMistralFactory` build the same models as fairseq2's factories (same
modules, parameters, state-dict keys and checkpoints) from :mod:`fspo_recipe.models.transformer`'s subclasses.
Their handlers are fairseq2's with only ``_create_model`` overridden. They replace fairseq2's handlers of these two
families only while an FSPO command or unit loads its models (:func:`packed_model_families`); other recipes in the
same environment get fairseq2's models.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

from torch import Tensor
from torch.nn import Module

from fairseq2.context import RuntimeContext
from fairseq2.models.llama import LLaMAConfig, LLaMAFactory, LLaMAModelHandler
from fairseq2.models.mistral import MistralConfig, MistralFactory, MistralModelHandler
from fairseq2.models.transformer_decoder import TransformerDecoderModel
from fairseq2.nn import PositionEncoder
from fairseq2.nn.transformer import (
    CausalAttentionMaskFactory,
    LocalAttentionStateFactory,
    MultiheadAttention,
    TransformerDecoder,
    TransformerNormOrder,
    create_default_sdpa,
)
from fairseq2.utils.file import StandardTensorLoader

from fspo_recipe.fairseq2_compat import replaced_model_handlers
from fspo_recipe.models.hub import HubModelHandler
from fspo_recipe.models.transformer import FspoDecoderModel, FspoTransformerDecoder, PackedMultiheadAttention

# fairseq2 0.4.6's default architectures of the two families (setup/_models.py), for cards without `model_arch`.
LLAMA_DEFAULT_ARCH = "llama3_1_8b"
MISTRAL_DEFAULT_ARCH = "7b"


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
        model = FspoDecoderModel(factory.create_decoder_frontend(), self.create_decoder(), factory.create_final_proj(),
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
    """A Hugging Face llama checkpoint with tied embeddings (Llama 3.2 1B/3B) has no ``lm_head.weight``; fairseq2
    0.4.6's llama has a separate output projection, which starts as a copy of the embedding (and is trained as its
    own matrix from then on). Other checkpoints are returned as they are."""
    if "model.embed_tokens.weight" in checkpoint and "lm_head.weight" not in checkpoint:
        embed = checkpoint["model.embed_tokens.weight"]
        checkpoint = {**checkpoint, "lm_head.weight": embed.clone() if isinstance(embed, Tensor) else embed}
    return checkpoint


class FspoLLaMAModelHandler(LLaMAModelHandler):
    """fairseq2's llama handler (configs, checkpoint conversion, sharding) building :class:`FspoLLaMAFactory`'s model;
    Hugging Face checkpoints with tied embeddings get their output projection (see :func:`tie_llama_checkpoint`)."""

    def _create_model(self, config: object) -> Module:
        return FspoLLaMAFactory(cast(LLaMAConfig, config)).create_model()

    def _convert_checkpoint(self, checkpoint: dict[str, object], config: object) -> dict[str, object]:
        return super()._convert_checkpoint(tie_llama_checkpoint(checkpoint), config)


class FspoMistralModelHandler(MistralModelHandler):
    """fairseq2's mistral handler building :class:`FspoMistralFactory`'s model."""

    def _create_model(self, config: object) -> Module:
        return FspoMistralFactory(cast(MistralConfig, config)).create_model()


def fspo_handlers(context: RuntimeContext) -> dict[str, object]:
    """Our handlers of fairseq2's llama and mistral families, made from the context's public parts (hub repositories
``hf://ORG/NAME`` accepted as checkpoints)."""
    loader = StandardTensorLoader(context.file_system)
    downloads = context.asset_download_manager
    llama = FspoLLaMAModelHandler(context.get_config_registry(LLaMAConfig), LLAMA_DEFAULT_ARCH, downloads, loader)
    mistral = FspoMistralModelHandler(context.get_config_registry(MistralConfig), MISTRAL_DEFAULT_ARCH, downloads,
                                      loader)
    return {"llama": HubModelHandler(llama), "mistral": HubModelHandler(mistral)}


@contextmanager
def packed_model_families(context: RuntimeContext) -> Iterator[None]:
    """Within the block, models of the llama and mistral families that fairseq2 loads or creates in ``context`` are
    built by our factories; fairseq2's handlers are back afterwards."""
    with replaced_model_handlers(context, fspo_handlers(context)):
        yield
