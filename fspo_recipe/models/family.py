"""A model family as the rest of the plugin sees it: one :class:`ModelFamily` record, built by the family's own
module (:mod:`fspo_recipe.models.llama`, :mod:`fspo_recipe.models.qwen3`) and listed in
:mod:`fspo_recipe.models.families`, where the extension, ``fspo-hf-card``, ``fspo-tiny-assets`` and the FSPO loaders
read it. Generic code asks the record; it never names a family.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from torch.nn import Module

from fairseq2.context import RuntimeContext

from fspo_recipe.models.hf_tokenizer import HfTokenizer


class TinyShape(Protocol):
    """The shape of a tiny random model (:class:`fspo_recipe.models.tiny.TinyModelSpec`)."""

    model_dim: int
    num_layers: int
    num_attn_heads: int
    num_key_value_heads: int
    head_dim: int
    ffn_inner_dim: int
    max_seq_len: int


HfConfigTranslator = Callable[[Mapping[str, Any], Path, HfTokenizer], dict[str, Any]]
"""(config.json, its path for messages, the tokenizer) -> the family's fairseq2 configuration fields; raises
:class:`~fspo_recipe.models.hf_tokenizer.HfImportError` for what the family cannot represent exactly."""


@dataclass(frozen=True)
class ModelFamily:
    """Everything generic code needs to know of one model family."""

    name: str
    """The ``model_family`` of its asset cards."""

    config_kls: type
    """Its fairseq2 configuration class (``model_config`` of a card is structured into it)."""

    create_model: Callable[[Any], Module]
    """A configuration -> the model with the packed-pairs interface (:mod:`fspo_recipe.models.packing`)."""

    tiny_arch: str
    """The architecture a tiny card names (its ``model_config`` overrides every field that matters)."""

    tiny_config: Callable[[TinyShape, dict[str, Any]], dict[str, Any]]
    """(tiny shape, ``vocab_info`` fields) -> configuration fields; ``ValueError`` for a shape the family cannot
    build."""

    hf_model_type: str | None = None
    """``model_type`` of the Hugging Face config.json this family imports (None: no import)."""

    hf_arch: str = ""
    """The architecture an imported card names."""

    hf_config: HfConfigTranslator | None = None
    """config.json -> configuration fields (with ``hf_model_type``)."""

    hf_tensors: Callable[[Mapping[str, Any]], dict[str, tuple[int, ...]]] | None = None
    """Configuration fields -> name and shape of every Hugging Face tensor (``lm_head.weight`` included)."""

    hf_architecture: str = ""
    """``architectures[0]`` of the config.json an import writes (e.g. ``LlamaForCausalLM``)."""

    hf_export: Callable[[Mapping[str, Any], Mapping[str, tuple[int, ...]]], dict[str, Any]] | None = None
    """(configuration fields, shapes of the exported Hugging Face tensors) -> the config.json of ``fspo-export-hf``
    (None: no export)."""

    gguf_arch: str | None = None
    """``general.architecture`` of the GGUF files this family imports (``fspo-gguf-card``; None: no import)."""

    gguf_rope_pairs: bool = False
    """The GGUF stores the q/k projection rows of every head in the rotary pair layout (llama.cpp permutes llama
    checkpoints so; Qwen3's keep Hugging Face's rotate-half layout): the import puts them back."""

    register: Callable[[RuntimeContext], None] | None = None
    """For a family new to fairseq2: register its configurations and handler (idempotent)."""

    packed_handler: Callable[[RuntimeContext], object] | None = None
    """For a family of fairseq2: the handler that builds our packed-pairs classes, used in place of fairseq2's while
    an FSPO command loads its models (:func:`fspo_recipe.models.families.packed_model_families`)."""
