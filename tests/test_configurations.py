"""Every file of example_configurations/ loads with its preset, and every value it sets reaches the config."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from test_cli import FAIRSEQ2

CONFIGS = sorted((REPO / "example_configurations").glob("*.yaml"))


def assignments(tree: object, prefix: str = "") -> dict[str, object]:
    """The dotted keys and values a config file sets (the leaves under `_set_`)."""
    out: dict[str, object] = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            if key == "_set_":
                for k, v in value.items():
                    out[f"{prefix}{k}"] = v
            else:
                out.update(assignments(value, f"{prefix}{key}."))
    return out


def lookup(config: dict, dotted: str) -> object:
    node: object = config
    for part in dotted.split("."):
        assert isinstance(node, dict), dotted
        node = node["_set_"][part] if "_set_" in node and part in node["_set_"] else node[part]
    return plain(node)


def plain(node: object) -> object:
    """A dict value as set (``--dump-config`` writes nested dicts in mergeable form, with ``_set_``)."""
    if not isinstance(node, dict):
        return node
    out = {k: plain(v) for k, v in node.items() if k != "_set_"}
    out.update({k: plain(v) for k, v in (node.get("_set_") or {}).items()})
    return out


def test_there_is_one_per_stage() -> None:
    names = {p.stem for p in CONFIGS}
    assert {"sft", "ipo_from_sft", "dpo", "rationale_sft", "precomputed_reference", "fsdp_3b", "fsdp_8b"} <= names


@pytest.mark.slow
@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_configuration_loads_through_dump_config(path: Path, tmp_path) -> None:
    text = path.read_text()
    preset = re.search(r"^# preset: (\S+)$", text, re.M)
    assert preset, f"{path.name} names no preset in a '# preset: NAME' line"
    assert f"--preset {preset[1]}" in text  # the command in its header uses that preset
    proc = subprocess.run(
        [FAIRSEQ2, "lm", "preference_finetune", str(tmp_path), "--preset", preset[1], "--config-file", str(path),
         "--dump-config"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "FAIRSEQ2_EXTENSION_TRACE": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    dumped = yaml.safe_load(proc.stdout)
    wanted = assignments(yaml.safe_load(text))
    assert wanted
    for key, value in wanted.items():
        assert lookup(dumped, key) == value, key
