"""Every reach into fairseq2 0.4.6 beyond its public API, and every workaround of one of its defects, in one place.

Nothing here changes fairseq2's behaviour at import or when the extension is loaded
(tests/test_architecture.py::test_installing_the_plugin_patches_nothing). What stays, each with the defect or gap it
works around, its scope, and the test that fails without it:

- :class:`FspoRecipeCommandHandler` overrides ``_read_config`` and ``_create_output_directory`` (private): there is
  no hook between reading the configuration and writing the run directory (lock, one-line config errors). FSPO
  runs only (``lock_when``). Tests: test_lock.py::test_a_second_training_run_into_the_same_directory_is_refused,
  test_train_recipe.py::test_configuration_errors_are_one_line_before_any_work.
- :func:`replace_recipe_command` replaces a registered command's handler (``CliGroup._commands``, private): there is
  no public way to wrap one. Non-FSPO runs go to fairseq2's loader untouched.
  Test: test_architecture.py::test_other_criteria_get_fairseq2s_loader_untouched.
- :func:`replaced_model_handlers` swaps entries of the model registry (``Registry._entries``, private): a key can be
  registered once, with no replace or remove. Only inside ``packed_model_families``, restored on exit.
  Test: test_architecture.py (packed classes inside the block, fairseq2's outside).
- :func:`load_files_and_weights` (private ``_load_files_and_weights``): the generic reader's directory and MANIFEST
  handling is not public. The ``fspo_preference`` reader. Test: test_reader.py.
- :func:`activate_fspo_workarounds` replaces ``init_process_group`` and ``ProcessGroupGang.barrier`` /
  ``all_gather`` for the CPU case: torch 2.6 and gloo reject what fairseq2 passes there; and, for a CPU module,
  the ``to_fsdp`` that ``wrap_fsdp`` calls (torch 2.6 refuses ``sync_module_states`` on CPU: rank 0's states are
  broadcast instead) and ``FileCheckpointManager.save_model`` (the consolidated state is gathered without an "offload"
  that on CPU points into freed memory) (:func:`_cpu_process_group_fixes`). FSPO training processes only.
  Tests: test_distributed.py::test_two_processes_give_the_loss_trajectory_of_one (eager, compiled, fsdp),
  test_distributed.py::test_an_fsdp_run_killed_with_sigkill_resumes_as_one_process_trains.
- :func:`repair_ddp_buffers`: ``to_ddp`` leaves the rotary tables of ranks > 0 uninitialized. The FSPO unit's own
  model. Test: test_distributed.py::test_repair_ddp_buffers_recomputes_every_rotary_table.
- :func:`generation_view`: the sampler zeroes the probability of ``pad_idx``, the end of sequence of some
  tokenizers. Generation by preference_eval.
  Test: test_models.py::test_generation_speaks_the_chat_template_and_stops_at_its_end_of_turn.

Two defects are handled outside this module without touching fairseq2: the metrics of a resumed run
(:func:`fspo_recipe.train.checkpoints.forget_redone_metrics`, a file operation before training) and the packed
attention's rotary width check (:class:`fspo_recipe.models.transformer.PackedMultiheadAttention`, a subclass).
"""

from __future__ import annotations

import dataclasses
import functools
from argparse import ArgumentParser, Namespace
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.nn import Module

from fairseq2.cli import CliArgumentError
from fairseq2.cli.commands.recipe import RecipeCommandHandler
from fairseq2.context import RuntimeContext
from fairseq2.models.decoder import DecoderModel

from fspo_recipe.lock import OutputInUseError, OutputLock


class FspoRecipeCommandHandler(RecipeCommandHandler):
    """fairseq2's recipe command with our additions, for the runs ``lock_when`` accepts (FSPO's; other runs get
    fairseq2's command unchanged):

    - an OUTPUT_DIR that is a file is a one-line argument error (fairseq2 0.4.6 prints a traceback);
    - a ``--config`` / ``--config-file`` key that the configuration does not have is named, with the closest keys
      (fairseq2 0.4.6 blames ``--config-file`` for both and names no key);
    - ``check_config`` turns a nonsense value (a batch size of 0, a learning rate of NaN) into a one-line error
      before any work;
    - the run directory is locked (:class:`fspo_recipe.lock.OutputLock`) by rank 0 from its creation to the end of
      the process, before fairseq2 writes ``config.yaml`` into it, so two runs never write one directory;
    - the loader is ours (:func:`fspo_recipe.train.recipe.load_preference_finetuner`).
    """

    def __init__(self, *args: Any, command: str, lock_when: Callable[[object], bool] = lambda config: True,
                 check_config: Callable[[object], str | None] = lambda config: None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._command = command
        self._lock_when = lock_when
        self._check_config = check_config
        self._lock: Any = None
        self._wants_lock = False

    def run(self, context: RuntimeContext, parser: ArgumentParser, args: Namespace) -> int:
        try:
            return super().run(context, parser, args)
        finally:
            if self._lock is not None:
                self._lock.release()
                self._lock = None

    # Private (both): RecipeCommandHandler reads the configuration and creates the run directory in these methods;
    # overriding them is the only way to act between the two and before fairseq2 writes into the directory.
    def _read_config(self, context: RuntimeContext, args: Namespace) -> object:
        from fairseq2.cli.commands.recipe import InvalidConfigFileError, InvalidConfigOverrideError

        try:
            config = super()._read_config(context, args)
        except (InvalidConfigOverrideError, InvalidConfigFileError) as ex:
            where = "--config" if isinstance(ex, InvalidConfigOverrideError) else f"--config-file {ex.config_file}"
            message = unknown_key_message(context, self._config_kls, args.preset, ex)
            if message is None:
                raise
            raise CliArgumentError(where, message) from None
        self._wants_lock = not args.dump_config and self._lock_when(config)
        if self._wants_lock:
            problem = self._check_config(config)
            if problem is not None:
                raise CliArgumentError("--config", problem) from None
        return config

    def _create_output_directory(self, context: RuntimeContext, output_dir: Path, sweep_tag: str | None) -> Path:  # type: ignore[override]
        import os

        from fairseq2.logging import log
        from fairseq2.utils.env import get_rank

        if self._wants_lock:
            blocking = next((p for p in [output_dir, *output_dir.parents] if p.exists() and not p.is_dir()), None)
            if blocking is not None:
                raise CliArgumentError("output_dir", f"{blocking} is a file, not a directory: choose another OUTPUT_DIR.")
        output_dir = super()._create_output_directory(context, output_dir, sweep_tag)
        if self._wants_lock and get_rank(os.environ) == 0:
            try:
                self._lock = OutputLock(output_dir, self._command).acquire(say=log.warning)
            except OutputInUseError as ex:
                raise CliArgumentError("output_dir", str(ex)) from None
        return output_dir


def unknown_key_message(context: RuntimeContext, config_kls: type, preset: str, error: BaseException) -> str | None:
    """One line for a merge error of fairseq2's configuration reader: "'dataset.batch_sise' is not a key of the
    fspo_ipo configuration; did you mean 'dataset.batch_size'?" (the keys beside it that are closest), or a key set
    below a value that is not a mapping; the merge error's own message otherwise (None without one)."""
    import difflib
    import re

    from fairseq2.utils.structured import unstructure

    cause = error.__cause__
    if cause is None:
        return None
    not_mapping = re.search(r"The '([^']+)' path at `target` must be of type .*Mapping.*but is of type `<class "
                            r"'(\w+)'>`", str(cause))
    if not_mapping is not None:
        path, kind = not_mapping.group(1), not_mapping.group(2)
        return (f"'{path}' is {'null' if kind == 'NoneType' else 'a ' + kind} in the {preset} configuration, so no key "
                f"below it can be set; set '{path}' itself as a whole.")
    found = re.search(r"does not have an item at path '([^']+)'", str(cause))
    if found is None:
        return " ".join(str(cause).split())
    path = found.group(1)
    *parents, leaf = path.split(".")
    try:
        node: Any = unstructure(context.get_config_registry(config_kls).get(preset))
    except Exception:  # noqa: BLE001 (only the hint is lost)
        node = None
    for key in parents:
        node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and "_set_" in node:
            node = node["_set_"]
    keys = [str(k) for k in node] if isinstance(node, dict) else []
    close = difflib.get_close_matches(leaf, keys, n=3, cutoff=0.6)
    prefix = ".".join(parents) + "." if parents else ""
    hint = (f"; did you mean {' or '.join(repr(prefix + k) for k in close)}?" if close else
            f"; the keys there: {', '.join(sorted(keys))}." if keys else ".")
    return f"'{path}' is not a key of the {preset} configuration{hint}"


def replace_recipe_command(cli: Any, group_name: str, command_name: str, loader: Any, **handler_options: Any) -> None:
    """Give fairseq2's ``group_name command_name`` recipe command a :class:`FspoRecipeCommandHandler` with ``loader``
    (and ``handler_options``: ``lock_when``, ``check_config``) and the same configuration class and default preset.
    Idempotent."""
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
        command=f"fairseq2 {group_name} {command_name}", **handler_options,
    )


def has_command(cli: Any, group_name: str, command_name: str) -> bool:
    """Whether ``group_name command_name`` is registered (CliGroup has no public look-up)."""
    return command_name in cli.get_group(group_name)._commands  # noqa: SLF001


# ---- model handlers (the packed-pairs subclasses of llama and mistral, while FSPO loads its models) --------------


@contextmanager
def replaced_model_handlers(context: RuntimeContext, handlers: Mapping[str, object]) -> Iterator[None]:
    """Within the block, ``context``'s model registry returns ``handlers`` for their families; restored after."""
    from fairseq2.models import ModelHandler

    registry = context.get_registry(ModelHandler)
    # Private: fairseq2 0.4.6's Registry can register a key only once and has no replace or remove.
    entries = registry._entries  # noqa: SLF001
    saved = {family: entries.get(family) for family in handlers}
    entries.update(handlers)
    try:
        yield
    finally:
        for family, handler in saved.items():
            if handler is None:
                entries.pop(family, None)
            else:
                entries[family] = handler


# ---- data ------------------------------------------------------------------------------------------------------


def load_files_and_weights(name: str, path: Path) -> tuple[list[Path], list[float]]:
    """The JSONL files of a data set directory and their sampling weights (its MANIFEST), as fairseq2 reads them."""
    # Private: the generic preference reader's directory and MANIFEST handling, which our reader must match.
    from fairseq2.datasets._utils import _load_files_and_weights  # noqa: PLC2701

    files, weights = _load_files_and_weights(name, path)
    return list(files), list(weights)


# ---- workarounds of fairseq2 0.4.6 defects, active in FSPO training runs only ----------------------------------


def _is_cuda(device: object) -> bool:
    return device is not None and torch.device(device).type == "cuda"  # type: ignore[arg-type]


def _cpu_process_group_fixes() -> list[tuple[object, str, object]]:
    """Several CPU processes (torchrun over gloo) with torch 2.6 fail in fairseq2 0.4.6's ProcessGroupGang:

    1. ``init_root_process_group`` calls ``dist.init_process_group(..., device_id=<cpu>)``; torch 2.6 accepts only
       a CUDA device with an index there. Fix: drop a CPU ``device_id``.
    2. ``barrier`` calls ``dist.barrier(device_ids=[device.index])``, i.e. ``[None]`` on CPU, which gloo rejects.
       Fix: a CPU barrier without ``device_ids``.
    3. ``all_gather`` hands gloo's ``all_gather_into_tensor`` the 0-d tensor with which the data readers agree on
       the number of batches; gloo needs at least one dimension. Fix: gather it as a 1-element tensor.
    4. ``wrap_fsdp`` builds FSDP with ``sync_module_states=True``, which torch 2.6 refuses for a CPU module. Fix:
       :func:`broadcast_module_states` first, then FSDP without the sync (the same states on every rank). The
       ranks' state is saved as fairseq2 saves it on GPUs (sharded: ``ShardedTensor`` objects, which the resume
       check of ``fspo_recipe.train.checkpoints`` allows).
    5. The checkpoint's consolidated FSDP state is gathered with ``offload_to_cpu=True``; on a CPU module the
       "offload" is no copy, so rank 0's state dict points into the unsharded parameters FSDP frees right after
       (the process dies with SIGSEGV while saving). Fix: for a CPU module, gather without the offload (FSDP then
       clones each tensor).

    Each fix changes only the CPU case. Returns (owner, attribute, replacement) for :func:`fspo_workarounds`.
    """
    import torch.distributed as dist
    from fairseq2.gang import GangError, ProcessGroupGang

    original_init = dist.init_process_group

    @functools.wraps(original_init)
    def init_process_group(*args: Any, device_id: object = None, **kwargs: Any) -> None:
        if device_id is not None and not _is_cuda(device_id):
            device_id = None
        if device_id is None:
            return original_init(*args, **kwargs)
        return original_init(*args, device_id=device_id, **kwargs)

    original_barrier = ProcessGroupGang.barrier

    @functools.wraps(original_barrier)
    def barrier(self: ProcessGroupGang) -> None:
        # Private: the gang's process groups; fairseq2 0.4.6 exposes neither.
        if self.device.type == "cpu" and self._monitor_pg is None:  # noqa: SLF001
            try:
                dist.barrier(group=self._pg)  # noqa: SLF001
            except RuntimeError as ex:
                raise GangError("The `barrier` collective operation has failed.") from ex
            return
        original_barrier(self)

    original_all_gather = ProcessGroupGang.all_gather

    @functools.wraps(original_all_gather)
    def all_gather(self: ProcessGroupGang, output_tensor: Tensor, input_tensor: Tensor) -> None:
        if self.device.type == "cpu" and input_tensor.dim() == 0:
            input_tensor = input_tensor.reshape(1)
        original_all_gather(self, output_tensor, input_tensor)

    import fairseq2.recipes.common._distributed as data_parallel

    original_to_fsdp = data_parallel.to_fsdp

    @functools.wraps(original_to_fsdp)
    def to_fsdp(module: Module, dp_gang: Any, *args: Any, broadcast_state: bool = False, **kwargs: Any) -> Module:
        if dp_gang.device.type != "cpu":
            return original_to_fsdp(module, dp_gang, *args, broadcast_state=broadcast_state, **kwargs)
        if broadcast_state:
            broadcast_module_states(module, dp_gang)
        return original_to_fsdp(module, dp_gang, *args, broadcast_state=False, **kwargs)

    import fairseq2.checkpoint._manager as checkpoints
    from torch.distributed.fsdp import FullyShardedDataParallel

    original_save_model = checkpoints.FileCheckpointManager.save_model
    full_state_dict_config = checkpoints.FullStateDictConfig

    @functools.wraps(original_save_model)
    def save_model(self: Any, model: Module) -> None:
        if not (isinstance(model, FullyShardedDataParallel) and model.compute_device.type == "cpu"):
            return original_save_model(self, model)

        def kept_in_place(*, offload_to_cpu: bool = False, rank0_only: bool = False) -> Any:
            return full_state_dict_config(offload_to_cpu=False, rank0_only=rank0_only)

        checkpoints.FullStateDictConfig = kept_in_place  # type: ignore[assignment,misc]
        try:
            return original_save_model(self, model)
        finally:
            checkpoints.FullStateDictConfig = full_state_dict_config  # type: ignore[misc]

    return [(dist, "init_process_group", init_process_group), (ProcessGroupGang, "barrier", barrier),
            (ProcessGroupGang, "all_gather", all_gather), (data_parallel, "to_fsdp", to_fsdp),
            (checkpoints.FileCheckpointManager, "save_model", save_model)]


def broadcast_module_states(module: Module, dp_gang: Any) -> None:
    """Rank 0's parameters and buffers (non-persistent ones included) on every rank of ``dp_gang``, ranks whose
    model is on the meta device materialized first (shared tensors stay shared). What FSDP's ``sync_module_states``
    does, which torch 2.6 refuses for CPU modules (fairseq2 0.4.6's ``wrap_fsdp`` always asks for it)."""
    import torch.distributed as dist

    from fairseq2.nn.utils.module import to_empty

    if any(t.device.type == "meta" for t in module.parameters()):
        to_empty(module, dp_gang.device)
    group = dp_gang.as_process_group()
    source = dist.get_global_rank(group, 0)
    seen: set[int] = set()
    for tensor in [*module.parameters(), *module.buffers()]:
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        dist.broadcast(tensor.data, src=source, group=group)


_ACTIVE: list[tuple[object, str, object]] = []


def activate_fspo_workarounds() -> None:
    """Apply the workarounds above for the rest of the process (idempotent). Called by the FSPO training loader,
    before fairseq2 creates the process group; a `fairseq2` process runs one recipe, so other recipes never see
    them. In-process callers that need them undone use :func:`fspo_workarounds` instead."""
    if _ACTIVE:
        return
    for owner, name, replacement in _cpu_process_group_fixes():
        _ACTIVE.append((owner, name, getattr(owner, name)))
        setattr(owner, name, replacement)


def deactivate_fspo_workarounds() -> None:
    """Undo :func:`activate_fspo_workarounds`."""
    while _ACTIVE:
        owner, name, original = _ACTIVE.pop()
        setattr(owner, name, original)


@contextmanager
def fspo_workarounds() -> Iterator[None]:
    """The workarounds, active within the block only (when they were not active before it)."""
    was_active = bool(_ACTIVE)
    activate_fspo_workarounds()
    try:
        yield
    finally:
        if not was_active:
            deactivate_fspo_workarounds()


def repair_ddp_buffers(model: Module) -> None:
    """Recompute the non-persistent buffers (rotary tables) of a DDP-wrapped ``model`` on every rank.

    fairseq2 0.4.6's ``to_ddp`` materializes the model on ranks other than 0 with ``to_empty`` and then resets the
    non-persistent buffers of the top module only (``recurse=False``); DDP is built with ``broadcast_buffers=False``,
    so the rotary encoders' ``freqs`` of those ranks keep uninitialized memory. Measured with two CPU processes:
    rank 1's table differed from rank 0's by up to 1.0, and its step-1 log-probs of the same weights by 0.3 nats.
    Not specific to CPU. The buffers are pure functions of the configuration, so recomputing them on every rank
    (rank 0 included) is exact; other models are untouched. Called by the FSPO unit on its own model.
    """
    from torch.nn.parallel import DistributedDataParallel

    from fairseq2.nn.utils.module import reset_non_persistent_buffers

    if isinstance(model, DistributedDataParallel):
        reset_non_persistent_buffers(model.module)


def generation_view(model: Any) -> Any:
    """Defect: fairseq2 0.4.6's sampling generator sets the probability of ``vocab_info.pad_idx`` to zero at every
    step, so a model whose tokenizer pads with its end-of-sequence token (Qwen3 base: both ``<|endoftext|>``) can
    never end an answer. The generator is given a :class:`_GenerationView` of ``model``: the same modules, with no
    pad index when it is the EOS index (the generator pads nothing with it: prompts are padded through a padding
    mask). Any other model is returned as it is; the model itself is never changed."""
    info = model.vocab_info
    if info.pad_idx is None or info.pad_idx != info.eos_idx:
        return model
    return _GenerationView(model).train(model.training)


class _GenerationView(DecoderModel):
    """``model`` as the sampling generator sees it: its decode and project, without a pad index."""

    def __init__(self, model: Any) -> None:
        super().__init__(model.model_dim, model.max_seq_len, dataclasses.replace(model.vocab_info, pad_idx=None))
        self.inner = model

    def decode(self, seqs: Any, padding_mask: Any, *, state_bag: Any = None) -> Any:
        return self.inner.decode(seqs, padding_mask, state_bag=state_bag)

    def project(self, decoder_output: Any, decoder_padding_mask: Any) -> Any:
        return self.inner.project(decoder_output, decoder_padding_mask)
