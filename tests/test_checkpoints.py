"""fspo_recipe/train/checkpoints.py: what a resumed run, or a command loading a run's model, may load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fspo_recipe.train.checkpoints import CheckpointCheckError, check_model_file, check_resume_checkpoint, step_dirs


class _Hostile:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def run_with_steps(root: Path, *steps: int) -> Path:
    for step in steps:
        (root / "checkpoints" / f"step_{step}").mkdir(parents=True)
        torch.save({"model": {"w": torch.ones(2)}, "fs2": True}, root / "checkpoints" / f"step_{step}" / "model.pt")
        torch.save({"_step_nr": step, "_optimizer": {"state": {}}}, root / "checkpoints" / f"step_{step}" / "rank_0.pt")
    return root


def test_a_sound_checkpoint_passes_and_the_last_step_is_checked(tmp_path) -> None:
    run = run_with_steps(tmp_path, 2, 10, 4)
    (run / "checkpoints" / "step_x").mkdir()  # not a step
    assert [s for s, _ in step_dirs(run / "checkpoints")] == [2, 4, 10]
    assert check_resume_checkpoint(run) == 10
    assert check_resume_checkpoint(tmp_path / "no_run") is None


def test_a_hostile_pickle_is_refused_before_it_runs(tmp_path) -> None:
    run = run_with_steps(tmp_path, 4, 8)
    marker = tmp_path / "code_ran"
    torch.save({"_step_nr": _Hostile(marker)}, run / "checkpoints" / "step_8" / "rank_0.pt")
    with pytest.raises(CheckpointCheckError, match="holds Python objects besides tensors.*a reference to") as info:
        check_resume_checkpoint(run)
    assert "move " in str(info.value) and "to resume from step 4" in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_a_damaged_file_is_named_with_the_step_to_resume_from_instead(tmp_path, damage) -> None:
    run = run_with_steps(tmp_path, 8)
    model = run / "checkpoints" / "step_8" / "model.pt"
    model.write_bytes(b"" if damage == "empty" else model.read_bytes()[:40])
    with pytest.raises(CheckpointCheckError, match=f"{model} is damaged .*move .*step_8 away to start the run from the "
                                                   "beginning"):
        check_resume_checkpoint(run)
    with pytest.raises(CheckpointCheckError, match="its model cannot be loaded"):
        check_model_file(model)
