"""The model families of this plugin: one :class:`~fspo_recipe.models.family.ModelFamily` record each, defined in
the family's own module. Adding a family = its module (model, config.json translation, tiny shape, registration)
+ one entry in :data:`FAMILIES` + its tests (docs/model_families.md)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from fairseq2.context import RuntimeContext

from fspo_recipe.fairseq2_compat import replaced_model_handlers
from fspo_recipe.models.family import ModelFamily
from fspo_recipe.models.llama import LLAMA, MISTRAL
from fspo_recipe.models.qwen3 import QWEN3

FAMILIES: dict[str, ModelFamily] = {family.name: family for family in (LLAMA, MISTRAL, QWEN3)}


def model_family(name: str) -> ModelFamily:
    """The record of the family ``name``; ``ValueError`` naming the known ones otherwise."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}") from None


def hf_families() -> dict[str, ModelFamily]:
    """The families that import Hugging Face directories, by config.json ``model_type``."""
    return {f.hf_model_type: f for f in FAMILIES.values() if f.hf_model_type and f.hf_config and f.hf_tensors}


def gguf_families() -> dict[str, ModelFamily]:
    """The families that import GGUF files, by ``general.architecture``."""
    return {f.gguf_arch: f for f in hf_families().values() if f.gguf_arch}


def register_families(context: RuntimeContext) -> None:
    """Register the families new to fairseq2 (their configurations and handlers); fairseq2's are left as they are."""
    for family in FAMILIES.values():
        if family.register is not None:
            family.register(context)


@contextmanager
def packed_model_families(context: RuntimeContext) -> Iterator[None]:
    """Within the block, models of fairseq2's families that ``context`` loads or creates are built by our packed-pairs
    factories (each family's ``packed_handler``); fairseq2's handlers are back afterwards."""
    handlers = {f.name: f.packed_handler(context) for f in FAMILIES.values() if f.packed_handler is not None}
    with replaced_model_handlers(context, handlers):
        yield
