"""The checkpoint a run resumes from, checked before fairseq2 loads it: it must load as tensors and plain data.

fairseq2 0.4.6 loads trainer, optimizer and data-reader state with ``torch.load(weights_only=False)``
(``recipes/common/_checkpoint.py``), so a pickle placed in ``checkpoints/step_N/rank_0.pt`` runs its code when the
run resumes, and a damaged file stops the run with a traceback that may name no file. Before an FSPO run starts,
every ``*.pt`` file of the step it will resume from is loaded here with ``weights_only=True`` (memory-mapped, so a
large model costs no read): a file that needs more than tensors and plain data is refused, a damaged one is named
with the step to resume from instead. A file that passes refers to nothing but what the restricted unpickler
allows, so fairseq2's own load of it runs no other code.

FSDP's sharded state (fairseq2's setting on GPUs: ``rank_N.pt`` holds the model's and the optimizer's shards as
``ShardedTensor`` objects) is checked too: the unpickler also allows the plain data classes a ``ShardedTensor`` is
made of and the one ``getattr`` its pickle needs (``ShardedTensor.ProcessGroupState``), and builds a stand-in for
the ``ShardedTensor`` itself, which needs no process group (:func:`_sharded_tensor_globals`).

The run's metrics are made to match the step it resumes from (:func:`forget_redone_metrics`).
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

from fspo_recipe.files import keep_lines, numbered


class CheckpointCheckError(ValueError):
    """A checkpoint file of the step a run would resume from is unsafe or damaged; printed as one line."""


def step_dirs(checkpoint_dir: Path) -> list[tuple[int, Path]]:
    """(step, directory) of every ``step_N`` directory, by step (what fairseq2's checkpoint manager lists)."""
    return [(step, path) for step, path in numbered(checkpoint_dir) if path.is_dir()]


class _ShardedTensorStandIn(torch.Tensor):
    """What the check builds where a file holds a ``ShardedTensor``: the same pickled state, kept as it is (the real
    class attaches it to the current process group, which the check has none of)."""

    @classmethod
    def __torch_dispatch__(cls, func: object, types: object, args: object = (), kwargs: object = None) -> object:
        raise TypeError("a checkpoint check's stand-in for a ShardedTensor has no data to compute with")

    def __setstate__(self, state: object) -> None:
        self.sharded_state = state


def _sharded_tensor_globals() -> list[object]:
    """The globals a ``ShardedTensor`` pickle refers to, for ``torch.serialization.safe_globals`` (none when this
    torch has no ``torch.distributed``)."""
    try:
        from torch.distributed.remote_device import _remote_device
        from torch.distributed._shard.metadata import ShardMetadata
        from torch.distributed._shard.sharded_tensor.api import ShardedTensor
        from torch.distributed._shard.sharded_tensor.metadata import (MEM_FORMAT_ENCODING, ShardedTensorMetadata,
                                                                      TensorProperties)
        from torch.distributed._shard.sharded_tensor.shard import Shard
        from torch.distributed._shard.sharding_spec import ChunkShardingSpec, EnumerableShardingSpec
    except ImportError:
        return []
    process_group_state = ShardedTensor.ProcessGroupState

    def restricted_getattr(owner: object, name: object) -> object:
        if owner is _ShardedTensorStandIn and name == "ProcessGroupState":
            return process_group_state
        raise pickle.UnpicklingError(f"Unsupported global: GLOBAL builtins.getattr of {name!r} (weights only)")

    return [(_ShardedTensorStandIn, "torch.distributed._shard.sharded_tensor.api.ShardedTensor"),
            (restricted_getattr, "builtins.getattr"), process_group_state, Shard, ShardMetadata, _remote_device,
            ShardedTensorMetadata, TensorProperties, MEM_FORMAT_ENCODING, EnumerableShardingSpec, ChunkShardingSpec]


def _load(path: Path) -> None:
    with torch.serialization.safe_globals(_sharded_tensor_globals()):
        try:
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as ex:
            if "mmap" not in str(ex):
                raise
            torch.load(path, map_location="cpu", weights_only=True)  # a file in torch's old (not zip) format


def check_file(path: Path, consequence: str, instead: str) -> None:
    """Load ``path`` as :func:`check_resume_checkpoint` does; raise :class:`CheckpointCheckError` saying
    ``consequence`` ("the run cannot resume from step 8") and what to do ``instead``."""
    try:
        _load(path)
    except pickle.UnpicklingError as ex:
        if "GLOBAL" not in str(ex):  # bytes the unpickler cannot read at all, not a reference it refused
            raise CheckpointCheckError(f"{path} is not a PyTorch checkpoint or is damaged ({_unpickler_reason(ex)}); "
                                       f"{consequence}: {instead}.") from None
        raise CheckpointCheckError(
            f"{path} holds Python objects besides tensors and plain data ({_unsafe_name(ex)}); loading it could run "
            f"code, so it is not loaded. If you did not write it yourself, {instead}."
        ) from None
    except Exception as ex:  # noqa: BLE001 (torch raises RuntimeError, EOFError, ValueError, OSError... here)
        raise CheckpointCheckError(f"{path} is damaged ({type(ex).__name__}: {_first_line(ex)}); {consequence}: "
                                   f"{instead}.") from None


def check_resume_checkpoint(output_dir: Path) -> int | None:
    """Check every ``*.pt`` file of the last checkpoint of the run in ``output_dir`` (see the module docstring);
    return its step, or None when there is none. Raises :class:`CheckpointCheckError`."""
    steps = step_dirs(output_dir / "checkpoints")
    if not steps:
        return None
    step, directory = steps[-1]
    if len(steps) > 1:
        instead = f"move {directory} away to resume from step {steps[-2][0]}"
    else:
        instead = f"move {directory} away to start the run from the beginning"
    for path in sorted(directory.glob("*.pt")):
        check_file(path, f"the run cannot resume from step {step}", instead)
    check_process_count(directory, step)
    return step


def check_process_count(directory: Path, step: int, environ: dict[str, str] | None = None) -> None:
    """Refuse a resume with another number of processes than wrote ``directory`` (one ``rank_N.pt`` per
    data-parallel process: trainer, optimizer, data-reader and, with FSDP, model shards). fairseq2 0.4.6 loads a
    missing rank's file as empty state and ignores extra ones, so such a resume would silently start fresh ranks or
    drop shards."""
    import os

    environ = dict(os.environ) if environ is None else environ
    ranks = {int(m.group(1)) for p in directory.glob("rank_*.pt") if (m := re.fullmatch(r"rank_(\d+)(\..*)?\.pt", p.name))}
    if not ranks:
        return
    written, world = max(ranks) + 1, int(environ.get("WORLD_SIZE", "1") or 1)
    if written != world:
        raise CheckpointCheckError(
            f"{directory} was written by {written} process(es) and this run has {world}; resume step {step} with "
            f"{written} (torchrun --nproc-per-node {written}, or the same number of GPUs), or start it afresh in "
            "another output directory.")


def check_model_file(path: Path) -> None:
    """Check the ``model.pt`` of a checkpoint a command loads a model from (a training run's step, a base model's
    last step): fairseq2 loads it with ``weights_only``, but a refusal or a damaged file is a traceback there."""
    check_file(path, "its model cannot be loaded", "choose another step or run (or train it again)")


def _first_line(ex: BaseException) -> str:
    text = str(ex).strip().splitlines()
    return text[0][:200] if text else "the file ends too early"


def _unpickler_reason(ex: BaseException) -> str:
    """The line of torch's weights-only message that says what it could not read ("Unsupported operand 179"), not
    its advice to load with ``weights_only=False``."""
    found = re.search(r"WeightsUnpickler error: ([^\n]+)", str(ex))
    return found.group(1).strip() if found else _first_line(ex)


def _unsafe_name(ex: BaseException) -> str:
    """What the restricted unpickler refused, from torch's message ("... unsupported GLOBAL posix.system ...")."""
    found = re.search(r"GLOBAL ([\w.]+)", str(ex))
    return f"a reference to {found.group(1)}" if found else _first_line(ex)


def forget_redone_metrics(output_dir: Path, resume_step: int | None) -> int:
    """Drop from ``output_dir/metrics/*.jsonl`` the lines of the steps after ``resume_step`` (every step line when
    the run starts over: None) and a line cut by a kill; return how many lines were dropped.

    fairseq2 0.4.6 resumes a killed run from its last checkpoint and appends to its metrics files: the lines of the
    steps it redoes would appear twice, and a cut line would stay. Called by the FSPO loader on rank 0 (the rank that
    writes metrics) before training starts; each file is rewritten atomically, and only when it has such lines."""
    def before_resume(record: dict[str, object]) -> bool:
        step = record.get("Step")
        return not isinstance(step, int) or resume_step is not None and step <= resume_step

    metrics = output_dir / "metrics"
    return sum(keep_lines(path, before_resume) for path in sorted(metrics.glob("*.jsonl"))) if metrics.is_dir() else 0
