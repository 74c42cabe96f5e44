"""The FSPO unit on the tiny llama, in process."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import make_batch, sample_examples
from fspo_recipe.criteria import CriterionError, get_criterion
from fspo_recipe.logprobs import response_logps
from fspo_recipe.unit import FspoFinetuneUnit


def full_logits_logps(model, batch):
    """The stock computation: logits at every position, then gather and mask (fairseq2's _gather_lprobs)."""
    from fairseq2.models.sequence import as_auto_regressive_input

    inputs, targets = as_auto_regressive_input(batch)
    logits = model(inputs).logits.float()
    token = torch.log_softmax(logits, -1).gather(-1, targets.seqs.unsqueeze(-1)).squeeze(-1)
    return (token * targets.target_mask).sum(-1)


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
