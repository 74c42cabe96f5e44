"""Several processes on CPU: `torchrun --nproc-per-node 2` over gloo with DDP, against one process."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from conftest import cli_env
from test_cli import FAIRSEQ2, metrics, run, tiny_assets  # noqa: F401  (tiny_assets is a fixture)

# Same global batch of 4 pairs per step: 4 pairs in one process, 2 pairs in each of two; no batch shuffle, so the
# shard of rank r is examples r, r+2, ... of the same example order, and the global batches are equal.
DDP_RUN = [
    "model.name=fspo_tiny_llama",
    "criterion.config.reference_model.name=fspo_tiny_llama",
    "dataset.name=fspo_sample",
    "dataset.batch_shuffle_window=1",
    "trainer.dtype=float32",
    "trainer.data_parallelism=ddp",
    "criterion.config.reference_dtype=float32",
    "optimizer.config.lr=1e-4",
    "lr_scheduler.config.num_warmup_steps=0",
    "regime.num_steps=4",
    "regime.publish_metrics_every_n_steps=1",
    "regime.checkpoint_every_n_steps=4",
]


# compile_layers under DDP: the compiled layer blocks inside the DDP wrapper (dynamo's aot_eager backend, as in
# tests/test_cli.py; tests/test_unit.py checks inductor's kernels) train as one eager process.
COMPILED = ["criterion.config.compile_layers=true", "criterion.config.compile_backend=aot_eager"]


@pytest.fixture(scope="module")
def one_process_run(tiny_assets, tmp_path_factory) -> Path:
    """The eager one-process run both two-process runs are compared with (made once)."""
    one = tmp_path_factory.mktemp("ddp") / "one"
    run(one, "fspo_ipo", f"common.assets.extra_path={tiny_assets}", "dataset.batch_size=4", *DDP_RUN)
    return one


@pytest.mark.slow
@pytest.mark.xdist_group("torchrun")  # torchrun --standalone listens on one fixed port
@pytest.mark.parametrize("two_process_options", [[], COMPILED], ids=["eager", "compiled"])
def test_two_processes_give_the_loss_trajectory_of_one(tiny_assets, one_process_run, tmp_path,
                                                       two_process_options) -> None:
    import subprocess

    one, two = one_process_run, tmp_path / "two"

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", FAIRSEQ2,
           "lm", "preference_finetune", str(two), "--preset", "fspo_ipo", "--no-sweep-dir", "--config",
           f"common.assets.extra_path={tiny_assets}", "dataset.batch_size=2", *DDP_RUN, *two_process_options]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=cli_env(OMP_NUM_THREADS="1"), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (two / "logs" / "rank_1.log").is_file()  # two processes did run
    if two_process_options:
        assert "compiled 18 layer blocks" in (two / "logs" / "rank_1.log").read_text()  # policy and reference, 2 x 9

    a, b = metrics(one), metrics(two)
    assert [r["Step"] for r in a] == [r["Step"] for r in b] == [1, 2, 3, 4]
    for ra, rb in zip(a, b):
        assert rb["Number of Elements"] == ra["Number of Elements"]  # the same global batch
        for key in ("FSPO Loss", "Chosen Rewards", "Rejected Rewards", "Reward Accuracy", "Gradient Norm"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-4, abs=1e-5), (ra["Step"], key)
    # Step 1: policy == reference on both ranks, so IPO's loss is exactly 1/(2*beta)^2 (fairseq2's to_ddp left
    # rank 1's rotary tables uninitialized before `repair_ddp_buffers`: 2504.79 here).
    assert b[0]["FSPO Loss"] == pytest.approx(2500.0, rel=1e-6)


def test_repair_ddp_buffers_recomputes_every_rotary_table(tiny_model, tmp_path) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from fspo_recipe.fairseq2_compat import fspo_workarounds, repair_ddp_buffers

    model = tiny_model()
    expected = {k: v.clone() for k, v in model.named_buffers() if k.endswith("freqs")}
    assert expected
    for k, v in model.named_buffers():
        if k.endswith("freqs"):
            v.fill_(7.0)  # what `to_empty` may leave behind

    with fspo_workarounds():
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rdzv'}", rank=0, world_size=1,
                                device_id=torch.device("cpu"))  # our workaround drops the CPU device_id torch rejects
    try:
        ddp = DistributedDataParallel(model, broadcast_buffers=False)
        repair_ddp_buffers(ddp)
    finally:
        dist.destroy_process_group()
    for k, v in model.named_buffers():
        if k in expected:
            assert torch.equal(v, expected[k]), k
