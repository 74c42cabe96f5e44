"""Adding a directory of fairseq2 asset cards to a runtime context (one place for the loader chain)."""

from __future__ import annotations

from pathlib import Path

from fairseq2.assets import FileAssetMetadataLoader, StandardAssetMetadataFileLoader
from fairseq2.context import RuntimeContext
from fairseq2.utils.yaml import StandardYamlLoader


def add_card_directory(context: RuntimeContext, path: Path, *, user: bool = True) -> None:
    """Register every ``*.yaml`` card below ``path``; ``user`` cards take precedence over fairseq2's own."""
    loader = FileAssetMetadataLoader(
        path.resolve(), context.file_system, StandardAssetMetadataFileLoader(StandardYamlLoader(context.file_system))
    )
    providers = context.asset_store.user_metadata_providers if user else context.asset_store.metadata_providers
    providers.append(loader.load())
