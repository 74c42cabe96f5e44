"""Each built-in criterion against values computed by hand from the published formulas."""

from __future__ import annotations

import math

import pytest
import torch

from fspo_recipe.criteria import (
    CriterionError,
    PairLogps,
    criterion_names,
    get_criterion,
    make_criterion_config,
    resolve_criterion_name,
)


def logps(pc, pr, rc=None, rr=None, lc=(4.0,), lr=(2.0,)) -> PairLogps:
    t = lambda v: None if v is None else torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return PairLogps(t(pc), t(pr), t(rc), t(rr), t(lc), t(lr))


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


# One pair: policy chosen -3, rejected -7; reference chosen -4, rejected -5.  h = (1) - (-2) = 3.
PAIR = dict(pc=[-3.0], pr=[-7.0], rc=[-4.0], rr=[-5.0])


def test_builtin_names() -> None:
    assert {"dpo", "ipo", "simpo", "sft", "rpo"} <= set(criterion_names())


def test_dpo_matches_eq7() -> None:
    loss = get_criterion("dpo", beta=0.1).loss(logps(**PAIR))
    assert loss.item() == pytest.approx(-log_sigmoid(0.1 * 3.0), rel=1e-12)


def test_conservative_dpo() -> None:
    eps = 0.2
    loss = get_criterion("dpo", beta=0.5, label_smoothing=eps).loss(logps(**PAIR))
    expected = -(1 - eps) * log_sigmoid(1.5) - eps * log_sigmoid(-1.5)
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_dpo_reference_free_ignores_reference() -> None:
    crit = get_criterion("dpo", beta=0.1, reference_free=True)
    assert not crit.needs_reference
    loss = crit.loss(logps(pc=[-3.0], pr=[-7.0]))
    assert loss.item() == pytest.approx(-log_sigmoid(0.1 * 4.0), rel=1e-12)


def test_ipo_matches_fspo_code() -> None:
    beta = 0.01
    loss = get_criterion("ipo", beta=beta).loss(logps(**PAIR))
    assert loss.item() == pytest.approx((3.0 - 1 / (2 * beta)) ** 2, rel=1e-12)
    assert loss.item() == pytest.approx(47.0**2)


def test_simpo_matches_eq6() -> None:
    crit = get_criterion("simpo", beta=2.0, gamma=0.5)
    assert not crit.needs_reference
    # length-normalized: chosen -3/4, rejected -7/2
    loss = crit.loss(logps(pc=[-3.0], pr=[-7.0], lc=[4.0], lr=[2.0]))
    assert loss.item() == pytest.approx(-log_sigmoid(2.0 * (-0.75) - 2.0 * (-3.5) - 0.5), rel=1e-12)


def test_sft_is_nll_of_responses() -> None:
    both = get_criterion("sft", include_rejected=True).loss(logps(pc=[-8.0], pr=[-6.0], lc=[4.0], lr=[2.0]))
    assert both.item() == pytest.approx(8.0 / 4 + 6.0 / 2)
    chosen = get_criterion("sft", length_normalized=False)  # the preferred answers only, by default
    assert chosen.loss(logps(pc=[-8.0], pr=[-6.0])).item() == pytest.approx(8.0)


def test_rpo_is_the_preference_loss_plus_the_chosen_nll() -> None:
    ipo = get_criterion("ipo", beta=0.01).loss(logps(**PAIR)).item()
    assert get_criterion("rpo", beta=0.01, alpha=2.0).loss(logps(**PAIR)).item() == pytest.approx(ipo + 2.0 * 3.0)
    dpo = get_criterion("dpo", beta=0.1).loss(logps(**PAIR)).item()
    rpo_dpo = get_criterion("rpo", preference="dpo", beta=0.1, alpha=0.5)
    assert rpo_dpo.loss(logps(**PAIR)).item() == pytest.approx(dpo + 0.5 * 3.0)
    assert get_criterion("rpo", alpha=0.0).loss(logps(**PAIR)).item() == pytest.approx(ipo)
    # The NLL term's gradient holds the chosen answer up: with the preference loss at its target it alone moves it.
    pc = torch.tensor([-3.0], dtype=torch.float64, requires_grad=True)
    at_target = PairLogps(pc, torch.tensor([-53.0], dtype=torch.float64), torch.tensor([0.0], dtype=torch.float64),
                          torch.tensor([0.0], dtype=torch.float64), torch.tensor([4.0], dtype=torch.float64),
                          torch.tensor([2.0], dtype=torch.float64))
    get_criterion("rpo", beta=0.01, alpha=3.0).loss(at_target).sum().backward()
    assert pc.grad.item() == pytest.approx(-3.0)
    # The rewards are the preference loss's (the DPO reward of beta).
    assert get_criterion("rpo", beta=0.01).rewards(logps(**PAIR))[0].item() == pytest.approx(0.01 * 1.0)


def test_losses_are_per_pair() -> None:
    p = logps(pc=[-3.0, -1.0, -2.0], pr=[-7.0, -1.0, -9.0], rc=[-4.0, -1.0, -2.0], rr=[-5.0, -1.0, -2.0],
              lc=[1.0, 1.0, 1.0], lr=[1.0, 1.0, 1.0])
    for name in ("dpo", "ipo", "simpo", "sft", "rpo"):
        assert get_criterion(name).loss(p).shape == (3,)


def test_dpo_rewards_and_accuracy_sign() -> None:
    chosen, rejected = get_criterion("dpo", beta=0.1).rewards(logps(**PAIR))
    assert chosen.item() == pytest.approx(0.1 * 1.0)
    assert rejected.item() == pytest.approx(0.1 * -2.0)


def test_missing_reference_is_a_clear_error() -> None:
    with pytest.raises(CriterionError, match="reference"):
        get_criterion("ipo").loss(logps(pc=[-1.0], pr=[-2.0]))


@pytest.mark.parametrize(
    "name,params,match",
    [
        ("dpo", {"beta": 0.0}, "beta must be > 0"),
        ("ipo", {"beta": -1.0}, "beta must be > 0"),
        ("dpo", {"label_smoothing": 0.5}, r"\[0, 0.5\)"),
        ("dpo", {"label_smoothing": -0.1}, r"\[0, 0.5\)"),
        ("ipo", {"betta": 0.1}, "no hyper-parameter 'betta'"),
        ("rpo", {"preference": "simpo"}, "preference must be 'ipo' or 'dpo'"),
        ("rpo", {"alpha": -1.0}, "alpha must be >= 0"),
        ("rpo", {"beta": 0.0}, "beta must be > 0"),
    ],
)
def test_bad_hyper_parameters(name, params, match) -> None:
    with pytest.raises(CriterionError, match=match):
        make_criterion_config(name, params)


def test_unknown_criterion_lists_known() -> None:
    with pytest.raises(CriterionError, match="Known criteria: .*dpo.*ipo"):
        resolve_criterion_name("nope")


def test_user_module_criterion_by_one_name(monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent / "fixtures"))
    crit = get_criterion("my_criteria:hinge", margin=2.0)
    loss = crit.loss(logps(**PAIR))
    assert loss.item() == pytest.approx(max(0.0, 2.0 - 3.0))
    assert "hinge" in criterion_names()
    with pytest.raises(CriterionError, match="cannot import module 'no_such_module'"):
        resolve_criterion_name("no_such_module:hinge")


def test_unit_config_builds_selected_criterion_and_checks_all_entries() -> None:
    from fspo_recipe.train.unit import FspoUnitConfig

    config = FspoUnitConfig(loss="dpo", loss_params={"dpo": {"beta": 0.3}, "ipo": {"beta": 0.01}})
    config.validate()
    crit = config.build_criterion()
    assert type(crit).__name__ == "DpoCriterion" and crit.config.beta == 0.3

    with pytest.raises(CriterionError, match="'ipo': beta must be > 0"):
        FspoUnitConfig(loss="dpo", loss_params={"ipo": {"beta": 0.0}}).validate()
    with pytest.raises(CriterionError, match="nll_scale must be >= 0"):
        FspoUnitConfig(loss="dpo", nll_scale=-1.0).validate()
    with pytest.raises(CriterionError, match="Unknown criterion 'dop'"):
        FspoUnitConfig(loss="dop").validate()
