"""The synthetic users of the personalization study, and the study's few-minute CI variant end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO
from fspo_recipe.data.synthetic import (
    POLE_TEXT,
    POLES,
    PROPERTIES,
    classify,
    heldout_users,
    interpolated_users,
    pairs_of_user,
    pole_balance,
    reading_ceiling,
    render_response,
    source_rows,
    write_study_sources,
)


def test_every_rendered_property_is_readable_back() -> None:
    import itertools
    import random

    for poles in itertools.product(*(POLES[p] for p in PROPERTIES)):
        wanted = dict(zip(PROPERTIES, poles))
        assert classify(render_response("a river", random.randrange(30), wanted)) == wanted


def test_chosen_and_rejected_differ_only_on_the_users_properties() -> None:
    import random

    _, combos = interpolated_users()
    train, _ = heldout_users(1, 1)
    for user in train + combos:
        for _, chosen, rejected in pairs_of_user(user, 30, random.Random(0)):
            c, r = classify(chosen), classify(rejected)
            differ = {p for p in PROPERTIES if c[p] != r[p]}
            own = {p for p in PROPERTIES if set(POLES[p]) & set(user.poles)}
            assert differ and differ <= own, (user, chosen, rejected)
            assert all(c[p] in user.poles for p in own)  # chosen always has the user's poles


def test_pooled_over_users_every_property_wins_half_of_the_pairs() -> None:
    train, test = heldout_users(3, 1)
    for users in (train, test):
        assert pole_balance(source_rows(users, 40, seed=0)) == {p: 0.5 for p in PROPERTIES}


def test_reading_ceiling_counts_only_what_the_shots_show() -> None:
    from fspo_recipe.data.episodes import PREFERRED_HEADER

    base = {"case": "lower", "length": "short", "mood": "positive", "ending": "calm"}

    def text(**poles: str) -> str:
        return render_response("rain", 0, {**base, **poles})

    def episode(shots, chosen, rejected):
        return {"episode": {"shots": [{"preferred": p, "dispreferred": d} for p, d in shots]},
                "tgt_chosen": f"{PREFERRED_HEADER}{chosen}\n", "tgt_rejected": f"{PREFERRED_HEADER}{rejected}\n"}

    upper_shot = (text(case="upper"), text(case="lower"))
    both = (text(case="upper", ending="exclaiming"), text(case="upper", ending="exclaiming"))  # shows nothing
    shown = episode([upper_shot], text(case="upper"), text(case="lower"))
    unshown = episode([upper_shot, both], text(ending="exclaiming"), text(ending="calm"))
    either = episode([upper_shot], text(case="upper", ending="exclaiming"), text(case="lower", ending="calm"))
    assert reading_ceiling([shown]) == 1.0 and reading_ceiling([unshown]) == 0.5 and reading_ceiling([either]) == 1.0
    assert reading_ceiling([shown, unshown]) == 0.75
    with pytest.raises(ValueError, match="no episodes"):
        reading_ceiling([])


def test_study_sources_keep_test_users_out_of_training(tmp_path) -> None:
    summary = write_study_sources(tmp_path, users_per_pole=2, rows_per_user=9, test_rows_per_user=9, seed=1)
    train = set(summary["train_users"])
    assert len(train) == 16 and len(summary["heldout_test_users"]) == 8 and len(summary["interpolated_test_users"]) == 24
    assert not train & set(summary["heldout_test_users"]) and not train & set(summary["interpolated_test_users"])
    rows = [json.loads(line) for line in (tmp_path / "heldout" / "train.jsonl").read_text().splitlines()]
    assert {r["scorer_level"] for r in rows} == train and len(rows) == 16 * 9
    # Training users have one property each; interpolated users combine two, a combination no training user has.
    assert all(" and " not in u for u in train)
    assert all(" and " in u for u in summary["interpolated_test_users"])
    again = tmp_path / "again"
    write_study_sources(again, users_per_pole=2, rows_per_user=9, test_rows_per_user=9, seed=1)
    assert (again / "heldout" / "test.jsonl").read_bytes() == (tmp_path / "heldout" / "test.jsonl").read_bytes()


@pytest.mark.slow
def test_quick_study_runs_the_whole_pipeline(tmp_path) -> None:
    """generation, prep, SFT, IPO and evaluation through the project's commands; invariants, not learning."""
    out = tmp_path / "study"
    proc = subprocess.run([sys.executable, str(REPO / "example_training_scripts" / "synthetic_study.py"), "--quick",
                           "--out", str(out)], capture_output=True, text=True, timeout=1200,
                          env={**os.environ, "COLUMNS": "400"})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "| fspo | heldout |" in proc.stdout and "0 shots | 1 shots | 2 shots" in proc.stdout

    def users(path):
        return {json.loads(line)["user"] for line in path.read_text().splitlines()}

    assets = out / "assets"
    for name in ("syn", "syn0"):
        train = users(assets / name / "train.jsonl")
        assert train and not train & users(assets / name / "test.jsonl")
        assert not train & users(assets / f"{name}int" / "test.jsonl")

    study = json.loads((out / "study.json").read_text())
    for variant, splits in study["results"].items():
        for split, m in splits.items():
            assert m["overall"]["pairs"] > 0
            for key in ("reward_accuracy", "policy_accuracy"):
                assert 0.0 <= m["overall"][key] <= 1.0, (variant, split, key)
            for k, row in m["shots"].items():
                assert 0.0 <= row["policy_accuracy"] <= 1.0
    # Balanced users: without shots no model beats chance, however it is trained (3 sigma at ~100 pairs).
    for split in ("heldout", "interpolated"):
        baseline = study["results"]["baseline"][split]["overall"]
        assert baseline["policy_accuracy"] == pytest.approx(0.5, abs=0.17), split
        assert baseline["reward_accuracy"] == pytest.approx(0.5, abs=0.17), split
    assert set(study["results"]["fspo"]["heldout"]["shots"]) == {"0", "1", "2"}
    # One-property held-out users show their property in every shot; two-property users not always.
    ceiling = study["reading_ceiling"]
    assert ceiling["heldout"] == 1.0 and 0.5 <= ceiling["interpolated"] < 1.0
    assert f"would reach heldout 1.000, interpolated {ceiling['interpolated']:.3f}" in proc.stdout
    # Every held-out user cares about one property: each property has its accuracy, a pair-weighted mean.
    by_property = study["results"]["fspo"]["heldout"]["by_property"]
    assert set(by_property) == set(PROPERTIES) and all(0.0 <= v <= 1.0 for v in by_property.values())
    # Each pole's accuracy at each IPO checkpoint (the training curve by pole): 5 steps, one checkpoint.
    curve = study["results"]["fspo"]["heldout"]["steps_by_pole"]
    assert list(curve) == ["5"] and set(curve["5"]) == {p for poles in POLES.values() for p in poles}
    assert curve["5"] == study["results"]["fspo"]["heldout"]["by_pole"]  # the last checkpoint is the final model
    assert "The same by the pole the held-out user prefers" in proc.stdout
    assert "loss of the preferred response" in proc.stdout and "| model | case | length | mood | ending |" in proc.stdout
    assert (out / "accuracy_vs_shots.png").stat().st_size > 0 and (out / "table.md").is_file()
    # The GPO baseline on the same users and shots, with embeddings of the SFT model and of the untrained model.
    assert "| GPO, SFT-model embeddings | heldout |" in proc.stdout
    for label in ("GPO, SFT-model embeddings", "GPO, untrained-model embeddings"):
        for split in ("heldout", "interpolated"):
            gpo = study["gpo"][label][split]
            assert set(gpo["shots"]) == {"0", "1", "2"} and 0.0 <= gpo["overall"]["accuracy"] <= 1.0
            assert gpo["overall"]["pairs"] == study["results"]["fspo"][split]["overall"]["pairs"]
    # Win rates of generated answers against the SFT model's, exact judge: every held-out query judged.
    assert "win rate vs its SFT model, exact judge" in proc.stdout
    for variant in ("baseline", "fspo"):
        win = study["win_rates_vs_sft"][variant]
        pairs = study["results"][variant]["heldout"]["overall"]["pairs"]
        assert win["judged"] == min(pairs, study["plan"]["generate_examples"]) and win["failures"] == 0
        assert 0.0 <= win["ci95"][0] <= win["win_rate"] <= win["ci95"][1] <= 1.0


def test_the_rejected_response_is_written_for_a_user_with_its_poles() -> None:
    """The rationale variant's rejected description must not be the user's own, or the targets give it away."""
    train, _ = heldout_users(1, 1)
    _, combos = interpolated_users()
    for review, users in ((False, train), (True, combos)):
        for user in users:
            own = [p for p in PROPERTIES if set(POLES[p]) & set(user.poles)]
            for row in source_rows([user], 10, seed=0, review=review):
                chosen_level, rejected_level = (row["level_x"], row["level_y"])[:: 1 if row["label"] == 0 else -1]
                assert chosen_level == row["scorer_level"] != rejected_level
                got = classify(str((row["response_x"], row["response_y"])[1 - row["label"]]))
                texts = [got[p] if review else POLE_TEXT[got[p]] for p in own]
                assert rejected_level.endswith(" and ".join(texts)), (rejected_level, texts)


def load_study_script():
    """The study's parts, as one namespace (plans, runner, report)."""
    from types import SimpleNamespace

    from fspo_recipe.study import cli, plan, report, run

    return SimpleNamespace(**{**vars(plan), **vars(report), **vars(run), **vars(cli)})


def test_multi_seed_summary_gives_mean_spread_and_an_interval_over_seeds_and_pairs(tmp_path) -> None:
    """The aggregation of per-seed studies (what --seeds writes after each seed's own study), on two seeds whose
    per-pair outcomes are known: 3 of 4 and 1 of 4 right."""
    study = load_study_script()
    plan = study.QUICK
    outcomes = {0: [1, 1, 1, 0], 1: [1, 0, 0, 0]}
    for seed, pairs in outcomes.items():
        seed_dir = tmp_path / f"seed_{seed}"
        acc = sum(pairs) / len(pairs)
        results = {}
        for variant in ("untrained", "baseline", "fspo"):
            results[variant] = {}
            for split in ("heldout", "interpolated"):
                target = seed_dir / "eval" / f"{variant}_{split}"
                target.mkdir(parents=True)
                (target / "pairs.csv").write_text("id,reward_accuracy,policy_accuracy\n" + "".join(
                    f"p{i},{o},{o}\n" for i, o in enumerate(pairs)))
                results[variant][split] = {
                    "overall": {"reward_accuracy": acc, "policy_accuracy": acc, "pairs": 4},
                    "shots": {str(k): {"reward_accuracy": acc - 0.1 * (2 - k)} for k in range(3)},
                    "by_property": {p: acc for p in PROPERTIES},
                    "by_pole": {pole: acc for poles in POLES.values() for pole in poles},
                    "steps": {"5": {"reward_accuracy": acc}} if variant == "fspo" else {},
                    "steps_by_pole": {"5": {"exclaiming": acc, "calm": 1 - acc}} if variant == "fspo" else {}}
        (seed_dir / "study.json").write_text(json.dumps({"results": results, "seconds": {"total": 60.0 + seed},
                                                         "reading_ceiling": {"heldout": 1.0, "interpolated": [0.9, 0.95][seed]}}))
    summary = study.aggregate(tmp_path, plan, [0, 1], seconds=130.0, jobs=2)
    fspo = summary["fspo"]["heldout"]["reward_accuracy"]
    assert fspo["mean"] == pytest.approx(0.5) and (fspo["min"], fspo["max"]) == (0.25, 0.75)
    assert fspo["seeds"] == [0.75, 0.25]
    low, high = fspo["ci95"]
    assert 0.0 <= low < 0.5 < high <= 1.0  # two very different seeds: a wide interval
    assert "reward_accuracy" not in summary["untrained"]["heldout"]  # no implicit reward without training
    assert summary["fspo"]["heldout"]["shots"]["0"]["mean"] == pytest.approx(0.3)
    assert summary["fspo"]["heldout"]["by_property"]["mood"]["min"] == 0.25
    assert summary["fspo"]["heldout"]["by_pole"]["exclaiming"]["seeds"] == [0.75, 0.25]
    saved = json.loads((tmp_path / "study.json").read_text())
    assert saved["seeds"] == [0, 1] and set(saved["per_seed"]) == {"0", "1"}
    table = (tmp_path / "table.md").read_text()
    assert "| fspo | heldout | 0.500 [" in table and "0.250-0.750 | 0.750 / 0.250 |" in table
    assert "| fspo | " + " | ".join(["0.75 / 0.25"] * 8) + " |" in table  # by pole, each seed
    assert "| exclaiming | 0.75 / 0.25 |" in table and "| calm | 0.25 / 0.75 |" in table  # each seed's curve
    assert "| upper | n/a / n/a |" in table
    assert "would reach: heldout 1.000 (1.000-1.000), interpolated 0.925 (0.900-0.950)." in table
    assert saved["reading_ceiling"]["interpolated"]["seeds"] == [0.9, 0.95]
    assert "Wall time: 2.2 min in all, 2 seeds at a time (seed 0 1.0, seed 1 1.0); no extras" in table
    assert (tmp_path / "accuracy_vs_shots.png").stat().st_size > 0
    # Equal seeds give an interval from the pairs alone, around their accuracy.
    assert study.seeds_and_pairs_interval([[1, 1, 1, 0]] * 3, 500)[0] < 0.75 < study.seeds_and_pairs_interval(
        [[1, 1, 1, 0]] * 3, 500)[1]


def test_seeds_run_side_by_side_at_most_jobs_at_once(tmp_path) -> None:
    """--jobs: every seed's command runs once, the first with the extras, at most `jobs` at a time, each told its
    share of the cores; its output goes to OUT/logs/seed_N.log."""
    study = load_study_script()
    script = ("import json, os, sys, time; t = time.time(); time.sleep(0.6); "
              "print(json.dumps({'seed': int(sys.argv[1]), 'first': sys.argv[2] == '1', 'start': t, 'end': time.time(), "
              "'threads': os.environ['OMP_NUM_THREADS']}))")

    def command(seed: int, first: bool) -> list[str]:
        return [sys.executable, "-c", script, str(seed), "1" if first else "0"]

    study.run_in_parallel(tmp_path, [3, 5, 7], 2, command)
    runs = [json.loads((tmp_path / "logs" / f"seed_{s}.log").read_text()) for s in (3, 5, 7)]
    assert [r["seed"] for r in runs] == [3, 5, 7] and [r["first"] for r in runs] == [True, False, False]
    assert {r["threads"] for r in runs} == {str(max(1, (os.cpu_count() or 1) // 2))}
    for run in runs:  # at any start, at most two runs have started and not ended
        assert sum(r["start"] <= run["start"] < r["end"] for r in runs) <= 2
    assert runs[2]["start"] >= min(runs[0]["end"], runs[1]["end"])  # the third waited for a free slot


def test_a_failing_seed_stops_the_others(tmp_path) -> None:
    study = load_study_script()
    marker = tmp_path / "finished"

    def command(seed: int, first: bool) -> list[str]:
        code = f"import time, pathlib; time.sleep(30); pathlib.Path({str(marker)!r}).write_text('x')" if first \
            else "import sys; print('broken data'); sys.exit(3)"
        return [sys.executable, "-c", code]

    with pytest.raises(SystemExit, match=r"seed 1 failed \(3\)(.|\n)*broken data"):
        study.run_in_parallel(tmp_path, [0, 1], 2, command)
    assert not marker.exists()  # seed 0 was stopped, not waited for
