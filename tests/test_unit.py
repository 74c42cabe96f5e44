"""The FSPO unit on the tiny llama, in process."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import make_batch, sample_examples
from fspo_recipe.criteria import CriterionError, get_criterion
from fspo_recipe.scoring.logps import response_logps
from fspo_recipe.train.unit import FspoFinetuneUnit


def full_logits_logps(model, batch):
    """The stock computation: logits at every position, then gather and mask (fairseq2's _gather_lprobs)."""
    from fairseq2.models.sequence import as_auto_regressive_input

    inputs, targets = as_auto_regressive_input(batch)
    logits = model(inputs).logits.float()
    token = torch.log_softmax(logits, -1).gather(-1, targets.seqs.unsqueeze(-1)).squeeze(-1)
    return (token * targets.target_mask).sum(-1)


@pytest.mark.parametrize("tiny_model", ["llama", "qwen3"], indirect=True)
def test_response_only_logits_equal_full_logits(tiny_model) -> None:
    model = tiny_model()
    examples = sample_examples(3)
    examples[1]["tgt_chosen"] = "x"  # uneven lengths, padding in the batch
    batch = make_batch(examples).chosen
    assert batch.padding_mask is not None

    ours, lengths = response_logps(model, batch)
    ours.sum().backward()
    ours_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    ref = full_logits_logps(model, batch)
    ref.sum().backward()

    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-4)
    assert lengths.tolist() == [len(e["tgt_chosen"].encode()) + 1 for e in examples]
    for a, p in zip(ours_grads, model.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-6)


def train(unit, model, batch, steps: int, lr: float):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    for _ in range(steps):
        opt.zero_grad()
        loss, n = unit(batch)
        (loss / n).backward()
        opt.step()
        bag = unit.metric_bag
        history.append((loss.item() / n, bag.reward_accuracy.compute().item()))
        bag.reset_metrics()
    return history


# IPO's squared loss on summed log-probs overshoots with DPO's learning rate: it gets a smaller one.
@pytest.mark.slow
@pytest.mark.parametrize("loss,params,lr", [("dpo", {"beta": 0.1}, 3e-3), ("ipo", {"beta": 0.1}, 3e-4)])
def test_loss_falls_and_reward_accuracy_rises(tiny_model, gangs, loss, params, lr) -> None:
    torch.manual_seed(0)
    model = tiny_model()
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    unit = FspoFinetuneUnit(model, reference, get_criterion(loss, **params), gangs)
    batch = make_batch(sample_examples(4))

    history = train(unit, model, batch, steps=25, lr=lr)

    first_loss, first_acc = history[0]
    last_loss, last_acc = history[-1]
    assert first_acc == 0.0  # policy == reference at step 0: rewards are 0, no pair counts as won
    assert last_loss < 0.5 * first_loss
    assert last_acc == 1.0


def test_precomputed_reference_gives_live_reference_loss(tiny_model, gangs) -> None:
    policy = tiny_model(seed=1)
    reference = tiny_model(seed=2).eval().requires_grad_(False)
    crit = get_criterion("ipo", beta=0.1)
    examples = sample_examples(5)

    live = FspoFinetuneUnit(policy, reference, crit, gangs)
    live_logps = live.compute_logps(make_batch(examples))
    live_loss, _ = live(make_batch(examples))

    for ex, c, r in zip(examples, live_logps.ref_chosen.tolist(), live_logps.ref_rejected.tolist()):
        ex["reference_score_chosen"], ex["reference_score_rejected"] = c, r
    examples[0]["reference_score_chosen"] = 0.0  # the stock reader would drop the whole batch's scores here
    stored = FspoFinetuneUnit(policy, None, crit, gangs)
    stored_loss, _ = stored(make_batch(examples))

    live_logps_0 = live_logps.ref_chosen.clone()
    live_logps_0[0] = 0.0
    expected = crit.loss(type(live_logps)(live_logps.policy_chosen, live_logps.policy_rejected, live_logps_0,
                                          live_logps.ref_rejected, live_logps.chosen_lengths,
                                          live_logps.rejected_lengths)).sum()
    torch.testing.assert_close(stored_loss, expected, rtol=1e-6, atol=1e-4)

    examples[0]["reference_score_chosen"] = live_logps.ref_chosen[0].item()
    torch.testing.assert_close(stored(make_batch(examples))[0], live_loss, rtol=1e-6, atol=1e-4)


def test_missing_reference_scores_name_the_examples(tiny_model, gangs) -> None:
    unit = FspoFinetuneUnit(tiny_model(), None, get_criterion("dpo"), gangs)
    examples = sample_examples(2)
    examples[0]["reference_score_chosen"] = -1.0
    examples[0]["reference_score_rejected"] = -1.0
    with pytest.raises(CriterionError, match=rf"1 example\(s\).*{examples[1]['id']}"):
        unit(make_batch(examples))


def test_reference_free_criteria_need_no_reference(tiny_model, gangs) -> None:
    for name in ("sft", "simpo"):
        loss, n = FspoFinetuneUnit(tiny_model(), None, get_criterion(name), gangs)(make_batch(sample_examples(2)))
        assert n == 2 and torch.isfinite(loss)


def test_accumulation_normalizes_over_pairs(tiny_model, gangs) -> None:
    """Two half batches, summed and divided by all pairs (what the trainer does), give the full batch's grads."""
    examples = sample_examples(4)

    def grads(batches):
        model = tiny_model()
        unit = FspoFinetuneUnit(model, None, get_criterion("sft"), gangs, nll_scale=0.5)
        total, pairs = 0.0, 0
        for b in batches:
            loss, n = unit(b)
            total, pairs = total + loss, pairs + n
        (total / pairs).backward()
        return [p.grad.clone() for p in model.parameters()], unit.metric_bag.fspo_loss.compute()

    full, full_metric = grads([make_batch(examples)])
    split, split_metric = grads([make_batch(examples[:1]), make_batch(examples[1:])])
    for a, b in zip(full, split):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(full_metric, split_metric)


@pytest.mark.parametrize("tiny_model", ["llama", "qwen3"], indirect=True)
def test_shared_prefix_equals_paired_logps_loss_and_gradients(tiny_model, gangs) -> None:
    """One [prompt, chosen, rejected] sequence per pair gives the paired path's numbers, padding included."""
    examples = sample_examples(4)
    examples[1]["tgt_chosen"] = "x"  # a one-byte response
    examples[2]["tgt_rejected"] = "## Preferred Response \nno\n"
    examples[3]["src"] = examples[3]["src"][:150]  # a short prompt: rows of very different lengths
    batch = make_batch(examples)
    assert batch.chosen.padding_mask is not None and batch.rejected.padding_mask is not None

    results = []
    for shared in (False, True):
        policy = tiny_model(seed=4)
        reference = tiny_model(seed=5).eval().requires_grad_(False)
        unit = FspoFinetuneUnit(policy, reference, get_criterion("dpo", beta=0.5), gangs, shared_prefix=shared,
                                nll_scale=0.3)
        logps = unit.compute_logps(batch)
        loss, _ = unit(batch)
        loss.backward()
        results.append((logps, loss.detach(), [p.grad.clone() for p in policy.parameters()]))

    (paired, paired_loss, paired_grads), (shared, shared_loss, shared_grads) = results
    for name in ("policy_chosen", "policy_rejected", "ref_chosen", "ref_rejected", "chosen_lengths", "rejected_lengths"):
        torch.testing.assert_close(getattr(shared, name), getattr(paired, name), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(shared_loss, paired_loss, rtol=1e-4, atol=1e-4)
    # float32 sums in another order: compare each gradient relative to its own scale.
    for a, b in zip(shared_grads, paired_grads):
        assert b.abs().max() > 0
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4 * float(b.abs().max()))
    flat = lambda gs: torch.cat([g.flatten() for g in gs])  # noqa: E731
    assert float((flat(shared_grads) - flat(paired_grads)).norm() / flat(paired_grads).norm()) < 2e-4


@pytest.mark.slow
@pytest.mark.parametrize("tiny_model", ["llama", "qwen3"], indirect=True)
def test_shared_prefix_is_exact_in_float64(tiny_model) -> None:
    """In float64 the two layouts agree to rounding: the float32 differences above are summation order only."""
    from fspo_recipe.scoring.logps import pair_logps

    examples = sample_examples(3)
    examples[0]["tgt_rejected"] = "z"
    batch = make_batch(examples)
    out = []
    for shared in (False, True):
        model = tiny_model(seed=6).double()
        logps, counts = pair_logps(model, batch.chosen, batch.rejected, shared_prefix=shared)
        (logps * torch.linspace(0.5, 1.5, 6, dtype=torch.float64)).sum().backward()
        out.append((logps.detach(), counts, torch.cat([p.grad.flatten() for p in model.parameters()])))
    (lp, cp, gp), (ls, cs, gs) = out
    torch.testing.assert_close(ls, lp, rtol=0, atol=1e-9)
    assert torch.equal(cs, cp)
    assert float((gs - gp).norm() / gp.norm()) < 1e-7  # rotary runs in float32 in fairseq2, both layouts


def test_shared_prefix_rejects_pairs_with_different_prompts(tiny_model) -> None:
    from fspo_recipe.scoring.logps import shared_prefix_logps

    examples = sample_examples(2)
    batch = make_batch(examples)
    other = make_batch([{**examples[0], "src": examples[1]["src"]}, examples[1]])
    with pytest.raises(ValueError, match="Pair 0 of the batch has different prompts"):
        shared_prefix_logps(tiny_model(), batch.chosen, other.rejected)


@pytest.mark.parametrize("tiny_model", ["llama", "qwen3"], indirect=True)
def test_shared_prefix_under_activation_checkpointing(tiny_model) -> None:
    """fairseq2 recomputes each layer during backward; the shared-prefix positions must survive that."""
    from fairseq2.nn.checkpointing import use_layerwise_activation_checkpointing
    from fspo_recipe.scoring.logps import pair_logps

    batch = make_batch(sample_examples(3))
    grads = []
    for checkpointed in (False, True):
        model = tiny_model(seed=7).train()
        if checkpointed:
            use_layerwise_activation_checkpointing(model)
        logps, _ = pair_logps(model, batch.chosen, batch.rejected, shared_prefix=True)
        logps.sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tiny_model", ["llama", "qwen3"], indirect=True)
def test_split_attention_equals_the_dense_shared_prefix_mask(tiny_model, monkeypatch) -> None:
    """The fast split attention and the plain [L, L] boolean mask give the same log-probs."""
    from fspo_recipe.models import transformer
    from fspo_recipe.scoring import logps as logprobs

    examples = sample_examples(3)
    examples[2]["tgt_chosen"] = "q"
    batch = make_batch(examples)
    model = tiny_model(seed=8)
    split, _ = logprobs.pair_logps(model, batch.chosen, batch.rejected, shared_prefix=True)

    monkeypatch.setattr(transformer, "packed_attention", transformer.dense_attention)
    dense_logps, _ = logprobs.pair_logps(model, batch.chosen, batch.rejected, shared_prefix=True)
    paired, _ = logprobs.pair_logps(model, batch.chosen, batch.rejected, shared_prefix=False)
    torch.testing.assert_close(dense_logps, split, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(paired, split, rtol=1e-5, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("tiny_model, backend", [("qwen3", "inductor"), ("llama", "aot_eager")],
                         indirect=["tiny_model"])
def test_compiled_layer_blocks_give_the_eager_logps_and_gradients(tiny_model, backend) -> None:
    """compile_layers under activation checkpointing: the same log-probs and gradients as the eager model, the
    attention left eager. Qwen3 (its q/k norms compiled with the projections) through CPU inductor (C++ kernels; a
    minute on two cores), llama through dynamo's aot_eager (the same graphs without code generation)."""
    import shutil

    import torch._dynamo
    from fairseq2.nn.checkpointing import use_layerwise_activation_checkpointing

    from fspo_recipe.models.transformer import PackedMultiheadAttention, compile_layer_blocks
    from fspo_recipe.scoring.logps import pair_logps

    if backend == "inductor" and not (shutil.which("g++") or shutil.which("c++")):
        backend = "aot_eager"  # inductor's CPU code generation needs a C++ compiler
    examples = sample_examples(3)
    examples[1]["tgt_rejected"] = "q"
    batch = make_batch(examples)
    results = []
    torch._dynamo.reset()
    for compiled in (False, True):
        model = tiny_model(seed=9).train()
        keys = list(model.state_dict())
        use_layerwise_activation_checkpointing(model)
        if compiled:
            assert compile_layer_blocks(model, backend=backend) == 2 * 4 + 1  # per layer 2 norms, ffn, qkv; final norm
            assert all(m._compiled_qkv is not None for m in model.modules() if isinstance(m, PackedMultiheadAttention))
        logps, _ = pair_logps(model, batch.chosen, batch.rejected, shared_prefix=True)
        (logps * torch.linspace(0.5, 1.5, 6)).sum().backward()
        results.append((logps.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])))
        assert [k.replace("_checkpoint_wrapped_module.", "") for k in model.state_dict()] == keys
    (eager, eager_grads), (comp, comp_grads) = results
    torch.testing.assert_close(comp, eager, rtol=1e-5, atol=1e-4)
    assert float((comp_grads - eager_grads).norm() / eager_grads.norm()) < 1e-4
    # A batch of another width runs without failing (dynamo recompiles shape-generic kernels).
    other = make_batch(sample_examples(2))
    logps, _ = pair_logps(model, other.chosen, other.rejected, shared_prefix=True)
    assert torch.isfinite(logps).all()


@pytest.mark.parametrize("tiny_model", ["llama", "qwen3"], indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_token_logps_equal_the_full_log_softmax(tiny_model, dtype, monkeypatch) -> None:
    """Response log-probs projected a few rows at a time (never the [N, vocab] float32 tensor) equal the full
    log-softmax, with the gradients of the hidden states and of the (untied llama, tied qwen3) output weight."""
    from fspo_recipe.scoring import logps as logprobs, tokens

    model = tiny_model(seed=10).to(dtype)
    torch.manual_seed(0)
    hidden = torch.randn(37, model.model_dim, dtype=dtype)
    targets = torch.randint(0, model.vocab_info.size, (37,))
    weights = torch.linspace(-1.0, 2.0, 37)
    results = []
    for chunk in (None, 5 * model.vocab_info.size):  # default: one [37, V] projection; else 5 rows at a time
        h = hidden.clone().requires_grad_()
        model.zero_grad(set_to_none=True)
        out = tokens.token_logps(model, h, targets, chunk_elements=chunk)
        assert out.dtype == torch.float32
        (out * weights).sum().backward()
        results.append((out.detach(), h.grad, model.final_proj.weight.grad))
    (full, gh_full, gw_full), (chunked, gh, gw) = results
    # float32: sums in another order (1e-5 of values up to 100); bf16: the logits are rounded to bf16 in both.
    tol = {"rtol": 1e-5, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    torch.testing.assert_close(chunked, full, **tol)
    torch.testing.assert_close(gh.float(), gh_full.float(), **tol)
    torch.testing.assert_close(gw.float(), gw_full.float(), **tol)
    # Through the whole packed forward: chunking below the batch's size changes nothing.
    batch = make_batch(sample_examples(2))
    model = tiny_model(seed=10)
    expected, _ = logprobs.pair_logps(model, batch.chosen, batch.rejected, shared_prefix=True)
    monkeypatch.setattr(tokens, "LOGITS_CHUNK_ELEMENTS", 3 * model.vocab_info.size)
    torch.testing.assert_close(logprobs.pair_logps(model, batch.chosen, batch.rejected, shared_prefix=True)[0],
                               expected, rtol=1e-5, atol=1e-4)
