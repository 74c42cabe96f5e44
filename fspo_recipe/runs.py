"""A training run's output directory as something to load from: its checkpoints as model cards (beside other runs'),
and the card directories it was trained with."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import yaml

from fairseq2.context import RuntimeContext

from fspo_recipe.assets import add_card_directory
from fspo_recipe.files import atomic_file, numbered
from fspo_recipe.train.checkpoints import check_model_file


class RunDirError(ValueError):
    """A directory is not the output of a training run, or its checkpoints cannot be used; the message says why."""


def checkpoint_steps(run_dir: Path) -> list[int]:
    """The ``step_N`` numbers under ``run_dir/checkpoints`` that hold a model, ascending."""
    base = run_dir / "checkpoints"
    if not base.is_dir():
        raise RunDirError(f"{base} does not exist: is {run_dir} the OUTPUT_DIR of a training run (with --no-sweep-dir)?")
    steps = [step for step, path in numbered(base) if (path / "model.pt").is_file()]
    if not steps:
        raise RunDirError(f"No checkpoint with a model.pt under {base} (sharded checkpoints are not supported).")
    return steps


def register_run_cards(context: RuntimeContext, run_dir: Path, alias: str, card_dir: Path) -> dict[int, str]:
    """Write a card per checkpoint of ``run_dir`` (named ``<alias>_step_<N>``) and register them; step -> name.

    Cards of two runs live side by side (fairseq2's own ``last_checkpoint@`` names one run only).
    """
    steps = checkpoint_steps(run_dir)
    meta_file = run_dir / "checkpoints" / "model.yaml"
    try:
        docs = list(yaml.safe_load_all(meta_file.read_text(encoding="utf-8")))
    except (OSError, yaml.YAMLError) as ex:
        raise RunDirError(f"{meta_file} cannot be read as the run's model card ({ex}).") from ex
    base = next((d for d in docs if isinstance(d, dict) and d.get("name") in ("checkpoint", "checkpoint@")), None)
    if base is None:
        raise RunDirError(f"{meta_file} has no 'checkpoint' card.")
    base = {k: v for k, v in base.items() if k != "name"}
    card_dir.mkdir(parents=True, exist_ok=True)
    names: dict[int, str] = {}
    cards = []
    for step in steps:
        names[step] = f"{alias}_step_{step}"
        model = (run_dir / "checkpoints" / f"step_{step}" / "model.pt").resolve()
        check_model_file(model)  # one line for a damaged or unsafe file, before fairseq2's traceback
        cards.append({"name": names[step], **base, "checkpoint": str(model)})
    (card_dir / f"{alias}.yaml").write_text(yaml.safe_dump_all(cards, sort_keys=False), encoding="utf-8")
    add_card_directory(context, card_dir)
    return names


def register_run(context: RuntimeContext, run_dir: Path, alias: str, *, known: Path | None = None) -> dict[int, str]:
    """:func:`register_run_cards` for a command that loads a run's models: with the card directory the run was
    trained with (its tokenizer's card often lives there, beside the base model's; not again when it is ``known``),
    the cards written to a temporary directory (they are read into memory on registration); step -> card name."""
    import tempfile

    add_run_card_directories(context, run_dir, known=known)
    with tempfile.TemporaryDirectory() as card_dir:
        return register_run_cards(context, run_dir, alias, Path(card_dir))


def add_run_card_directories(context: RuntimeContext, run_dir: Path, *, known: Path | None = None) -> None:
    """Register the card directories ``run_dir`` was trained with (recorded, and its ``common.assets.extra_path``)
    that exist, except ``known`` (registered already)."""
    for directory in dict.fromkeys([*recorded_card_directories(run_dir), run_asset_path(run_dir)]):
        if directory is not None and directory.is_dir() and directory != known:
            add_card_directory(context, directory)


def run_asset_path(run_dir: Path) -> Path | None:
    """The ``common.assets.extra_path`` a training run was started with (from its ``config.yaml``), if any."""
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    assets = (config or {}).get("common", {}).get("assets", {}) if isinstance(config, dict) else {}
    value = (assets.get("_set_") or assets).get("extra_path") if isinstance(assets, dict) else None
    return Path(value) if value else None


CARD_DIRECTORIES_FILE: Final = "fspo_card_directories.json"
"""Written into an FSPO training run's OUTPUT_DIR: the card directories it was started with, so that the commands
that load the run later (export, evaluation, GPO, reference scoring) find its base model's and tokenizer's cards
without the environment it was trained in."""

CARD_DIRECTORY_VARIABLES: Final = ("FAIRSEQ2_USER_ASSET_DIR", "FAIRSEQ2_ASSET_DIR")


def record_card_directories(output_dir: Path, extra_path: object, base_run: Path | None,
                            environ: Mapping[str, str] = os.environ) -> list[Path]:
    """Write OUTPUT_DIR/:data:`CARD_DIRECTORIES_FILE`: the directories of ``FAIRSEQ2_USER_ASSET_DIR``,
    ``FAIRSEQ2_ASSET_DIR``, ``common.assets.extra_path`` (``extra_path``) and those recorded by the run this one starts
    from (``base_run``), as absolute paths; return them."""
    found: list[Path] = [Path(environ[v]).resolve() for v in CARD_DIRECTORY_VARIABLES if environ.get(v)]
    if isinstance(extra_path, (str, os.PathLike)) and str(extra_path):
        found.append(Path(extra_path).resolve())
    if base_run is not None:
        found += recorded_card_directories(base_run)
    found += recorded_card_directories(output_dir)  # a resumed run keeps what its first start recorded
    directories = list(dict.fromkeys(found))
    output_dir.mkdir(parents=True, exist_ok=True)
    with atomic_file(output_dir / CARD_DIRECTORIES_FILE) as fp:
        fp.write(json.dumps({"card_directories": [str(d) for d in directories]}, indent=1) + "\n")
    return directories


def recorded_card_directories(run_dir: Path) -> list[Path]:
    """The card directories a run recorded (:func:`record_card_directories`); none for a run that recorded none or
    whose record cannot be read (then the commands name the flag that adds a card directory)."""
    try:
        value = json.loads((run_dir / CARD_DIRECTORIES_FILE).read_text(encoding="utf-8"))
        return [Path(d) for d in value["card_directories"] if isinstance(d, str)]
    except (OSError, ValueError, KeyError, TypeError):
        return []
