"""Hugging Face hub repositories as fairseq2 checkpoints: a card whose ``checkpoint`` (or ``tokenizer``) is
``hf://ORG/NAME[@REVISION]`` is downloaded with ``huggingface_hub`` (``HF_HUB_OFFLINE=1``: from its cache only)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Final

from torch.nn import Module

from fairseq2.assets import AssetCard, AssetCardError
from fairseq2.gang import Gangs
from fairseq2.models import ModelHandler
from fairseq2.typing import DataType

HUB_SCHEME: Final = "hf://"


def hub_snapshot(uri: str, patterns: Sequence[str]) -> Path:
    """The local directory of hub repository ``hf://ORG/NAME[@REVISION]`` with the files matching ``patterns``,
    downloaded with ``huggingface_hub`` (or found in its cache; ``HF_HUB_OFFLINE=1`` uses the cache only)."""
    from huggingface_hub import snapshot_download

    repo, _, revision = uri.removeprefix(HUB_SCHEME).partition("@")
    return Path(snapshot_download(repo, revision=revision or None, allow_patterns=list(patterns)))


def card_text(card: AssetCard, field: str) -> str | None:
    try:
        value = card.field(field).as_(str)
    except AssetCardError:
        return None
    return value


def hub_checkpoint_path(card: AssetCard) -> Path | None:
    """The snapshot directory of a card whose ``checkpoint`` is ``hf://ORG/NAME``; None for other checkpoints."""
    uri = card_text(card, "checkpoint")
    if uri is None or not uri.startswith(HUB_SCHEME):
        return None
    return hub_snapshot(uri, ["*.safetensors", "*.json"])


class HubModelHandler(ModelHandler):
    """A model handler that also loads cards whose ``checkpoint`` is a hub repository (``hf://ORG/NAME``); the rest
    is the wrapped handler's (configurations, conversion, creation)."""

    def __init__(self, inner: ModelHandler) -> None:
        self.inner = inner

    def get_config(self, arch: str | None) -> object:
        return self.inner.get_config(arch)

    def load_config(self, card: AssetCard) -> object:
        return self.inner.load_config(card)

    def create(self, config: object, gangs: Gangs, dtype: DataType, meta: bool) -> Module:
        return self.inner.create(config, gangs, dtype, meta)

    def load(self, card: AssetCard, gangs: Gangs, dtype: DataType, config: object) -> Module:
        path = hub_checkpoint_path(card)
        if path is None:
            return self.inner.load(card, gangs, dtype, config)
        return self.inner.load_from_path(path, card.name, config if config is not None else self.load_config(card),
                                         gangs, dtype)

    def load_from_path(self, path: Path, model_name: str, config: object, gangs: Gangs, dtype: DataType) -> Module:
        return self.inner.load_from_path(path, model_name, config, gangs, dtype)

    @property
    def family(self) -> str:
        return self.inner.family

    @property
    def kls(self) -> type[Module]:
        return self.inner.kls

    @property
    def config_kls(self) -> type[object]:
        return self.inner.config_kls

    @property
    def supports_meta(self) -> bool:
        return self.inner.supports_meta

    @property
    def supports_sharding(self) -> bool:
        return self.inner.supports_sharding
