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


@pytest.mark.parametrize("damage", ["empty", "truncated", "random"])
def test_a_damaged_file_is_named_with_the_step_to_resume_from_instead(tmp_path, damage) -> None:
    import random

    run = run_with_steps(tmp_path, 8)
    model = run / "checkpoints" / "step_8" / "model.pt"
    garbage = random.Random(0).randbytes(4096)  # a file of random bytes: damaged, not a security risk
    model.write_bytes({"empty": b"", "truncated": model.read_bytes()[:40], "random": garbage}[damage])
    with pytest.raises(CheckpointCheckError, match=f"{model} is (not a PyTorch checkpoint or is )?damaged .*move "
                                                   ".*step_8 away to start the run from the beginning") as info:
        check_resume_checkpoint(run)
    assert "run code" not in str(info.value) and "Weights only load failed" not in str(info.value)
    with pytest.raises(CheckpointCheckError, match="its model cannot be loaded"):
        check_model_file(model)


def _sharded_state(tmp_path: Path) -> dict[str, object]:
    """A rank's state as FSDP's sharded state dicts hold it (fairseq2's setting on GPUs): ShardedTensor shards. The
    process group it starts stays until the caller has pickled the state (a ShardedTensor pickles its group's
    ranks)."""
    import torch.distributed as dist
    from torch.distributed._shard.metadata import ShardMetadata
    from torch.distributed._shard.sharded_tensor import Shard, init_from_local_shards

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rdzv'}", rank=0, world_size=1)

    def sharded(rows: int) -> object:
        local = Shard(torch.randn(rows, 3), ShardMetadata([0, 0], [rows, 3], "rank:0/cpu"))
        return init_from_local_shards([local], [rows, 3])

    return {"model": {"w": sharded(4)}, "_step_nr": 8,
            "optimizer": {"state": {"w": {"exp_avg": sharded(4), "step": torch.tensor(8.0)}},
                          "param_groups": [{"lr": 1e-3, "params": ["w"]}]}}


class _Reach:
    """A pickle calling ``getattr`` on an allowed class for something else than ``ProcessGroupState``."""

    def __reduce__(self):
        from torch.distributed._shard.sharded_tensor.api import ShardedTensor

        return (getattr, (ShardedTensor, "__init__"))


def test_fsdp_sharded_state_passes_and_other_getattrs_are_refused(tmp_path) -> None:
    import torch.distributed as dist

    run = run_with_steps(tmp_path, 4, 8)
    rank_file = run / "checkpoints" / "step_8" / "rank_0.pt"
    try:
        torch.save(_sharded_state(tmp_path), rank_file)
    finally:
        dist.destroy_process_group()
    assert "torch.distributed._shard.sharded_tensor.api.ShardedTensor" in \
        torch.serialization.get_unsafe_globals_in_checkpoint(rank_file)
    assert check_resume_checkpoint(run) == 8  # no process group needed: the check builds a stand-in
    assert not any("ShardedTensor" in str(g) for g in torch.serialization.get_safe_globals())  # allowed only inside

    torch.save({"_step_nr": 8, "reach": _Reach()}, rank_file)
    with pytest.raises(CheckpointCheckError, match="holds Python objects besides tensors.*getattr"):
        check_resume_checkpoint(run)


def test_a_resume_with_another_number_of_processes_is_refused_in_one_line(tmp_path) -> None:
    """fairseq2 loads a missing rank_N.pt as empty state: a run written by 2 processes (FSDP shards, DDP reader
    states) resumed by 1, or by 4, would silently lose or invent state."""
    from fspo_recipe.train.checkpoints import check_process_count

    step = tmp_path / "step_8"
    step.mkdir()
    for rank in (0, 1):
        torch.save({"_step_nr": 8}, step / f"rank_{rank}.pt")
    check_process_count(step, 8, {"WORLD_SIZE": "2"})
    for world in ("1", "4"):
        with pytest.raises(CheckpointCheckError, match=f"written by 2 process.*this run has {world}.*--nproc-per-node 2"):
            check_process_count(step, 8, {"WORLD_SIZE": world})
    with pytest.raises(CheckpointCheckError, match="this run has 1"):
        check_process_count(step, 8, {})  # a plain, single-process start
