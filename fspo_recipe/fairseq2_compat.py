"""Every reach into fairseq2 0.4.6 beyond its public API, and every workaround of one of its defects, in one place.

Each private name used below has a comment saying why; each workaround names the defect it works around, is
active only inside this plugin's commands and units (see :func:`fspo_scope`), and has a test that fails without
it. Nothing here changes fairseq2's behaviour at import or when the extension is loaded.
"""

from __future__ import annotations

from argparse import ArgumentParser, Namespace
from pathlib import Path
from typing import Any

from fairseq2.cli import CliArgumentError
from fairseq2.cli.commands.recipe import RecipeCommandHandler
from fairseq2.context import RuntimeContext


class FspoRecipeCommandHandler(RecipeCommandHandler):
    """fairseq2's recipe command with two additions: an OUTPUT_DIR that is a file is a one-line argument error
    (fairseq2 0.4.6 prints a traceback), and the loader is ours (it enters :func:`fspo_scope` for FSPO runs)."""

    def run(self, context: RuntimeContext, parser: ArgumentParser, args: Namespace) -> int:
        output_dir: Path | None = getattr(args, "output_dir", None)
        if output_dir is not None and not args.list_preset_configs and not args.dump_config:
            blocking = next((p for p in [output_dir, *output_dir.parents] if p.exists() and not p.is_dir()), None)
            if blocking is not None:
                raise CliArgumentError("output_dir", f"{blocking} is a file, not a directory: choose another OUTPUT_DIR.")
        return super().run(context, parser, args)


def replace_recipe_command(cli: Any, group_name: str, command_name: str, loader: Any) -> None:
    """Give fairseq2's ``group_name command_name`` recipe command a :class:`FspoRecipeCommandHandler` with ``loader``
    and the same configuration class and default preset. Idempotent."""
    group = cli.get_group(group_name)
    # Private: fairseq2 0.4.6 has no public way to look up or wrap a registered command; CliGroup keeps them in
    # `_commands` and CliCommand its handler in `_handler`.
    command = group._commands[command_name]  # noqa: SLF001
    handler = command._handler  # noqa: SLF001
    if isinstance(handler, FspoRecipeCommandHandler):
        return
    # Private: RecipeCommandHandler keeps its configuration class and default preset in these attributes only.
    command._handler = FspoRecipeCommandHandler(  # noqa: SLF001
        loader=loader, config_kls=handler._config_kls, default_preset=handler._default_preset,  # noqa: SLF001
        extra_sweep_keys=handler._extra_sweep_keys,  # noqa: SLF001
    )


def has_command(cli: Any, group_name: str, command_name: str) -> bool:
    """Whether ``group_name command_name`` is registered (CliGroup has no public look-up)."""
    return command_name in cli.get_group(group_name)._commands  # noqa: SLF001
