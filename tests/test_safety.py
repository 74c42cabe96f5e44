"""Nothing from data, cards or checkpoints is executed; the same seed gives the same run."""

from __future__ import annotations

import os
import subprocess

import pytest
import torch

from conftest import REPO
from test_cli import CPU_TINY, FAIRSEQ2, metrics, run


class _Exploit:
    """Unpickling this runs a shell command: a checkpoint must never be unpickled with full pickle."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture()
def assets(tmp_path):
    from fspo_recipe.models.tiny import write_tiny_assets

    write_tiny_assets(tmp_path / "assets", seed=0)
    return tmp_path / "assets"


def train(out, *overrides) -> subprocess.CompletedProcess:
    cmd = [FAIRSEQ2, "lm", "preference_finetune", str(out), "--preset", "fspo_sft", "--no-sweep-dir", "--config",
           "model.name=fspo_tiny_llama", "dataset.path=datasets/samples/fspo_sample", *CPU_TINY, *overrides]
    env = {**os.environ, "FAIRSEQ2_EXTENSION_TRACE": "1", "TIKTOKEN_CACHE_DIR": "", "COLUMNS": "400"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)


@pytest.mark.slow
def test_crafted_pickle_checkpoint_is_refused(assets, tmp_path) -> None:
    marker = tmp_path / "pwned"
    state = torch.load(assets / "model.pt", weights_only=True)
    state["exploit"] = _Exploit(str(marker))
    torch.save(state, assets / "model.pt")
    with pytest.raises(Exception):  # noqa: B017 - the point is only that it does not load
        torch.load(assets / "model.pt", weights_only=True)

    proc = train(tmp_path / "run", f"common.assets.extra_path={assets}")
    assert proc.returncode != 0
    assert "model.pt' tensor file cannot be loaded" in proc.stderr and "weights_only" in proc.stderr
    assert not marker.exists()


@pytest.mark.slow
def test_yaml_with_a_python_tag_is_refused(assets, tmp_path) -> None:
    marker = tmp_path / "pwned"
    (assets / "evil.yaml").write_text(f'name: evil\nx: !!python/object/apply:os.system ["touch {marker}"]\n')
    proc = train(tmp_path / "run", f"common.assets.extra_path={assets}")
    assert proc.returncode != 0
    assert "could not determine a constructor for the tag 'tag:yaml.org,2002:python/object/apply" in proc.stderr
    assert not marker.exists()

    config = tmp_path / "config.yaml"
    config.write_text(f'regime:\n  _set_:\n    num_steps: !!python/object/apply:os.system ["touch {marker}"]\n')
    (assets / "evil.yaml").unlink()
    proc = train(tmp_path / "run2", f"common.assets.extra_path={assets}", "--config-file", str(config))
    assert proc.returncode != 0
    assert "could not determine a constructor" in proc.stderr + proc.stdout
    assert not marker.exists()


@pytest.mark.slow
def test_same_seed_same_metrics(assets, tmp_path) -> None:
    rows = []
    for name in ("a", "b"):
        run(tmp_path / name, "fspo_ipo", f"common.assets.extra_path={assets}", "model.name=fspo_tiny_llama",
            "criterion.config.reference_model.name=fspo_tiny_llama", *CPU_TINY, "optimizer.config.lr=1e-3")
        timing = {"Time", "Elapsed Time", "Wall Time", "Data Read Time", "Elements per Second"}
        rows.append([{k: v for k, v in r.items() if k not in timing} for r in metrics(tmp_path / name)])
    assert len(rows[0]) == 3
    assert rows[0] == rows[1]
