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


# FSDP over gloo (fspo_recipe/fairseq2_compat.py fixes 4 and 5): full sharding of every decoder layer, fp32.
FSDP = ["trainer.data_parallelism=fsdp"]


def two_process_command(out: Path, tiny_assets: Path, *options: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", FAIRSEQ2,
            "lm", "preference_finetune", str(out), "--preset", "fspo_ipo", "--no-sweep-dir", "--config",
            f"common.assets.extra_path={tiny_assets}", "dataset.batch_size=2", *DDP_RUN, *options]


def assert_export_equals_checkpoint(run_dir: Path, tiny_assets: Path, out: Path) -> None:
    """fspo-export-hf of the run's last checkpoint: transformers' logits equal fairseq2's of that checkpoint."""
    from fairseq2.context import get_runtime_context
    from fairseq2.models.sequence import SequenceBatch
    from transformers import AutoModelForCausalLM

    from fspo_recipe.models.hf_export import main
    from fspo_recipe.runs import register_run_cards
    from test_models import load_fairseq2

    assert main([str(run_dir), str(out / "export")]) == 0
    names = register_run_cards(get_runtime_context(), run_dir, "exported", out / "cards")
    ours = load_fairseq2(names[max(names)], tiny_assets)
    theirs = AutoModelForCausalLM.from_pretrained(out / "export", dtype=torch.float32).eval()
    seqs = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = float((ours(SequenceBatch(seqs, None)).logits - theirs(input_ids=seqs).logits).abs().max())
    assert diff < 1e-4, diff


@pytest.mark.slow
@pytest.mark.xdist_group("torchrun")  # torchrun --standalone listens on one fixed port
@pytest.mark.parametrize("two_process_options", [[], COMPILED, FSDP], ids=["eager", "compiled", "fsdp"])
def test_two_processes_give_the_loss_trajectory_of_one(tiny_assets, one_process_run, tmp_path,
                                                       two_process_options) -> None:
    import subprocess

    one, two = one_process_run, tmp_path / "two"

    cmd = two_process_command(two, tiny_assets, *two_process_options)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=cli_env(OMP_NUM_THREADS="1"), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (two / "logs" / "rank_1.log").is_file()  # two processes did run
    if two_process_options == COMPILED:
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
    if two_process_options != COMPILED:  # the checkpoint of a DDP and of an FSDP run leaves fairseq2
        assert_export_equals_checkpoint(two, tiny_assets, tmp_path / "export")
        one_state = torch.load(one / "checkpoints" / "step_4" / "model.pt", weights_only=True)["model"]
        two_state = torch.load(two / "checkpoints" / "step_4" / "model.pt", weights_only=True)["model"]
        two_state = {k.removeprefix("module."): v for k, v in two_state.items()}  # DDP's prefix (fairseq2 drops it)
        assert set(two_state) == set(one_state)  # consolidated: every tensor whole, once
        for key, tensor in one_state.items():
            # Adam moves each weight by about lr (1e-4) per step whatever the gradient's size: a gradient near 0
            # that the two reductions round differently moves one weight by up to 2 lr; the rest agree closely.
            diff = (two_state[key] - tensor).abs()
            assert float(diff.max()) < 4e-4 and float(diff.mean()) < 1e-6, (key, float(diff.max()), float(diff.mean()))


@pytest.mark.slow
@pytest.mark.xdist_group("torchrun")
def test_an_fsdp_run_killed_with_sigkill_resumes_as_one_process_trains(tiny_assets, tmp_path) -> None:
    """Two FSDP processes, SIGKILL after the step-4 checkpoint, the same command again: the run ends at step 8 with
    the losses of one uninterrupted process (the sharded optimizer state restored on each rank). The ranks save
    their state as fairseq2 does on GPUs (``ShardedTensor`` shards of the model and the optimizer state), which the
    resume check passes."""
    import os
    import signal
    import subprocess
    import time

    longer = ["regime.num_steps=8", "regime.checkpoint_every_n_steps=4"]
    one, two = tmp_path / "one", tmp_path / "two"
    run(one, "fspo_ipo", f"common.assets.extra_path={tiny_assets}", "dataset.batch_size=4", *DDP_RUN, *longer)
    cmd = two_process_command(two, tiny_assets, *FSDP, *longer)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=cli_env(OMP_NUM_THREADS="1"), start_new_session=True)
    train = two / "metrics" / "train.jsonl"
    deadline = time.monotonic() + 300
    while not (train.is_file() and '"Step": 5,' in train.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both ranks
    proc.wait()
    assert [p.name for p in (two / "checkpoints").glob("step_*")] == ["step_4"]
    for rank in (0, 1):
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(two / "checkpoints" / "step_4" / f"rank_{rank}.pt")
        assert "torch.distributed._shard.sharded_tensor.api.ShardedTensor" in unsafe, unsafe
    proc = subprocess.run(cmd, capture_output=True, text=True, env=cli_env(OMP_NUM_THREADS="1"), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    a, b = metrics(one), metrics(two)
    assert [r["Step"] for r in b] == list(range(1, 9))
    for ra, rb in zip(a, b):
        for key in ("FSPO Loss", "Chosen Rewards", "Rejected Rewards", "Gradient Norm"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-4, abs=1e-5), (ra["Step"], key)


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


@pytest.mark.slow
@pytest.mark.xdist_group("torchrun")
def test_an_fsdp_run_of_a_hugging_face_model_is_exported_answered_and_judged(tmp_path) -> None:
    """The loop of the paper's evaluation on a run trained by two FSDP processes: a tiny Hugging Face llama (with a
    tokenizer and chat template) trained, exported, its answers generated by fspo-generate and judged by fspo-judge."""
    import json
    import subprocess

    from hf_fixtures import write_hf_model

    from fspo_recipe.eval.generate_cli import main as generate_main
    from fspo_recipe.judge.cli import main as judge_main
    from fspo_recipe.models.hf import main as hf_card_main
    from test_judge import ScriptedServer

    cards = tmp_path / "cards"
    assert hf_card_main([str(write_hf_model(tmp_path / "hf", "llama", seed=2, tied=True)), "--name", "fsdp_llama",
                         "--out", str(cards)]) == 0
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", FAIRSEQ2, "lm",
           "preference_finetune", str(run), "--preset", "fspo_sft", "--no-sweep-dir", "--config",
           f"common.assets.extra_path={cards}", "model.name=fsdp_llama", "dataset.name=fspo_sample",
           "dataset.batch_size=2", "trainer.dtype=float32", *FSDP, "optimizer.config.lr=1e-3",
           "lr_scheduler.config.num_warmup_steps=0", "regime.num_steps=2", "regime.checkpoint_every_n_steps=2",
           "dataset.extras={chat_template: true}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=cli_env(OMP_NUM_THREADS="1"), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert_export_equals_checkpoint(run, cards, tmp_path / "check")
    export = tmp_path / "check" / "export"
    assert json.loads((export / "config.json").read_text())["tie_word_embeddings"] is True
    sample = Path(__file__).resolve().parents[1] / "datasets" / "samples" / "fspo_sample" / "train.jsonl"
    for system, model_dir in (("fsdp", export), ("base", tmp_path / "hf")):
        assert generate_main([str(tmp_path / f"answers_{system}"), "--data", str(sample), "--model", str(model_dir),
                              "--system", system, "--chat-template", "--max-examples", "4", "--max-new-tokens", "8",
                              "--no-progress"]) == 0
    with ScriptedServer() as judge:
        assert judge_main([str(tmp_path / "judge"), "--generations",
                           str(tmp_path / "answers_fsdp" / "generations.jsonl"),
                           str(tmp_path / "answers_base" / "generations.jsonl"), "--baseline", "base", "--base-url",
                           judge.url, "--model", "judge", "--no-progress"]) == 0
    assert json.loads((tmp_path / "judge" / "win_rates.json").read_text())["systems"]["fsdp"]["overall"]["judged"] == 4
