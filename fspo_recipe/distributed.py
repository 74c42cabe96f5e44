"""Several CPU processes (``torchrun`` over gloo) with fairseq2 0.4.6 and torch 2.6: three small workarounds.

fairseq2 0.4.6 was written for NCCL on CUDA. With ``torchrun --nproc-per-node N`` on CPU it fails in three
places (see FAIRSEQ2_NOTES):

1. ``ProcessGroupGang.init_root_process_group`` calls ``dist.init_process_group(..., device_id=<cpu>)``;
   torch 2.6 accepts only a CUDA device with an index there.
2. ``ProcessGroupGang.barrier`` calls ``dist.barrier(device_ids=[device.index])``, i.e. ``[None]`` on CPU,
   which gloo rejects.
3. ``ProcessGroupGang.all_gather`` hands gloo's ``all_gather_into_tensor`` the 0-d tensor with which the data
   readers agree on the number of batches; gloo needs at least one dimension.

Each patch changes only the CPU case and passes CUDA calls through unchanged; :func:`install` runs once from
the plugin's extension entry point (so before any gang exists) and is idempotent.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn import Module

_INSTALLED = "_fspo_cpu_workaround"


def _is_cuda(device: object) -> bool:
    return device is not None and torch.device(device).type == "cuda"  # type: ignore[arg-type]


def install() -> None:
    """Patch fairseq2's ProcessGroupGang and ``dist.init_process_group`` for CPU processes (once)."""
    from fairseq2.gang import ProcessGroupGang

    if getattr(ProcessGroupGang, _INSTALLED, False):
        return

    # 1. No device_id for a CPU process group (torch wants a CUDA device with an index, or nothing).
    original_init = dist.init_process_group

    @functools.wraps(original_init)
    def init_process_group(*args: Any, device_id: object = None, **kwargs: Any) -> None:
        if device_id is not None and not _is_cuda(device_id):
            device_id = None
        if device_id is None:
            return original_init(*args, **kwargs)
        return original_init(*args, device_id=device_id, **kwargs)

    dist.init_process_group = init_process_group  # fairseq2 calls it as `dist.init_process_group`

    # 2. A CPU barrier without device_ids.
    original_barrier = ProcessGroupGang.barrier

    @functools.wraps(original_barrier)
    def barrier(self: ProcessGroupGang) -> None:
        if self.device.type == "cpu" and self._monitor_pg is None:
            from fairseq2.gang import GangError

            try:
                dist.barrier(group=self._pg)
            except RuntimeError as ex:
                raise GangError("The `barrier` collective operation has failed.") from ex
            return
        original_barrier(self)

    # 3. gloo's all_gather_into_tensor with a 0-d input: gather it as a 1-element tensor.
    original_all_gather = ProcessGroupGang.all_gather

    @functools.wraps(original_all_gather)
    def all_gather(self: ProcessGroupGang, output_tensor: Tensor, input_tensor: Tensor) -> None:
        if self.device.type == "cpu" and input_tensor.dim() == 0:
            input_tensor = input_tensor.reshape(1)
        original_all_gather(self, output_tensor, input_tensor)

    ProcessGroupGang.barrier = barrier  # type: ignore[method-assign]
    ProcessGroupGang.all_gather = all_gather  # type: ignore[method-assign]
    setattr(ProcessGroupGang, _INSTALLED, True)


def repair_ddp_buffers(model: Module) -> None:
    """Recompute the non-persistent buffers (rotary tables) of a DDP-wrapped ``model`` on every rank.

    fairseq2 0.4.6's ``to_ddp`` materializes the model on ranks other than 0 with ``to_empty`` and then resets
    the non-persistent buffers of the top module only (``recurse=False``); DDP is built with
    ``broadcast_buffers=False``, so the rotary encoders' ``freqs`` of those ranks keep uninitialized memory.
    Measured with two CPU processes: rank 1's table differed from rank 0's by up to 1.0, and its step-1
    log-probs of the same weights by 0.3 nats. Not specific to CPU. The buffers are pure functions of the
    configuration, so recomputing them on every rank (rank 0 included) is exact; other models are untouched.
    """
    from torch.nn.parallel import DistributedDataParallel

    from fairseq2.nn.utils.module import reset_non_persistent_buffers

    if isinstance(model, DistributedDataParallel):
        reset_non_persistent_buffers(model.module)
