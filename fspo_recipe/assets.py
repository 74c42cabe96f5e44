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


def load_error_types() -> tuple[type[Exception], ...]:
    """fairseq2's errors for a model, tokenizer or card that cannot be found or loaded: our commands print them as
    one line (with :func:`describe_load_error`) instead of a traceback."""
    from fairseq2.assets import AssetCardError, AssetCardNotFoundError, AssetDownloadError
    from fairseq2.data.text.tokenizers import (
        TextTokenizerLoadError,
        UnknownTextTokenizerError,
        UnknownTextTokenizerFamilyError,
    )
    from fairseq2.models import (
        ModelConfigLoadError,
        ModelLoadError,
        UnknownModelArchitectureError,
        UnknownModelError,
        UnknownModelFamilyError,
    )

    return (AssetCardError, AssetCardNotFoundError, AssetDownloadError, TextTokenizerLoadError,
            UnknownTextTokenizerError, UnknownTextTokenizerFamilyError, ModelConfigLoadError, ModelLoadError,
            UnknownModelArchitectureError, UnknownModelError, UnknownModelFamilyError)


def describe_load_error(ex: BaseException) -> str:
    """The message of ``ex`` and of its causes on one line ("See the nested exception" replaced by the nested one)."""
    parts = []
    seen: BaseException | None = ex
    while seen is not None and len(parts) < 4:
        text = str(seen).replace(" See the nested exception for details.", "").strip()
        if text and text not in parts:
            parts.append(text)
        seen = seen.__cause__
    return ": ".join(parts)
