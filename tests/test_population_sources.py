"""PRISM (real participants) and PersonalLLM (simulated populations) as FSPO sources: their pairs, users,
descriptions and counts of what is skipped; errors naming the file and line; the hub path; training and evaluation
on each sample."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import REPO
from fspo_recipe.data.prepare import main as prepare_main
from fspo_recipe.data.sources import ReadReport, get_source, read_source

SAMPLES = REPO / "datasets" / "samples"


def rows_of(source: str, inputs: list[str], **options):
    from fspo_recipe.data.sources import prism

    prism._surveys.clear()  # noqa: SLF001 (a test reads several surveys under one path)
    report = ReadReport()
    return read_source(get_source(source), inputs, report, options=options), report


def conversations() -> list[dict]:
    return [json.loads(line) for line in (SAMPLES / "prism" / "conversations.jsonl").read_text().splitlines()]


def test_prism_pairs_the_rated_responses_of_each_turn_after_the_conversation_so_far() -> None:
    rows, report = rows_of("prism", [str(SAMPLES / "prism")])
    rows = rows["train"]
    survey = {json.loads(line)["user_id"]: json.loads(line)
              for line in (SAMPLES / "prism" / "survey.jsonl").read_text().splitlines()}
    by_id = {r.row_id.split("/", 1)[1]: r for r in rows}
    for conv in conversations():
        if conv["user_id"] not in survey:
            assert not any(k.startswith(conv["conversation_id"] + "/") for k in by_id)
            continue
        history = conv["conversation_history"]
        opening = next(h["content"] for h in history if h["turn"] == 0 and h["role"] == "user")
        chosen = next(h["content"] for h in history if h["turn"] == 0 and h.get("if_chosen") is True)
        for turn in (0, 1):
            rated = [h for h in history if h["turn"] == turn and h["role"] == "model" and h["score"] is not None]
            for a in rated:
                for b in rated:
                    key = f"{conv['conversation_id']}/{turn}/{a['within_turn_id']}-{b['within_turn_id']}"
                    if a["within_turn_id"] >= b["within_turn_id"]:
                        continue
                    if a["score"] == b["score"]:
                        assert key not in by_id  # a tie
                        continue
                    row = by_id[key]
                    better, worse = (a, b) if a["score"] > b["score"] else (b, a)
                    assert (row.preferred, row.dispreferred) == (better["content"], worse["content"])
                    assert row.user == conv["user_id"]
                    if turn == 0:
                        assert row.question == opening
                    else:  # the conversation so far, with the response the participant chose
                        assert row.question.startswith(f"User: {opening}\n\nAssistant: {chosen}\n\nUser: ")
    description = next(iter(rows)).user_description
    uid = next(iter(rows)).user
    assert survey[uid]["self_description"] in description and survey[uid]["system_string"] in description
    skipped = report.skipped
    assert skipped["participant missing from the survey"] == 3
    assert skipped["equal ratings (a tie)"] > 0 and skipped["response without a rating"] == 4

    gap, gap_report = rows_of("prism", [str(SAMPLES / "prism")], min_rating_gap=40, description="self_description")
    assert 0 < len(gap["train"]) < len(rows) and gap_report.skipped["ratings closer than --min-rating-gap"] > 0
    assert all(abs(len(r.user_description) - len(survey[r.user]["self_description"])) == 0 for r in gap["train"])


def test_prism_input_errors_name_the_file_and_what_is_expected(tmp_path, capsys) -> None:
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(SAMPLES / "prism" / "conversations.jsonl", alone)
    bad_survey = tmp_path / "bad"
    bad_survey.mkdir()
    shutil.copy(SAMPLES / "prism" / "conversations.jsonl", bad_survey)
    (bad_survey / "survey.jsonl").write_text('{"user_id": "user0", "self_description": "x"}\n')
    no_history = tmp_path / "nohistory"
    no_history.mkdir()
    shutil.copy(SAMPLES / "prism" / "survey.jsonl", no_history)
    (no_history / "conversations.jsonl").write_text('{"conversation_id": "c", "user_id": "user0"}\n')
    cases = [
        (alone, "survey.jsonl: the PRISM survey is not beside conversations.jsonl"),
        (bad_survey, "survey.jsonl, line 1: missing field(s) 'system_string'"),
        (no_history, "missing column(s) 'conversation_history' for the prism schema"),
    ]
    for directory, expected in cases:
        from fspo_recipe.data.sources import prism

        prism._surveys.clear()  # noqa: SLF001
        assert prepare_main(["prism", "--input", str(directory), "--out", str(tmp_path / "out"), "--quiet"]) == 1
        err = capsys.readouterr().err.strip()
        assert expected in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out" / "prism").exists()


def test_prism_from_the_hub_reads_its_conversations_and_survey_configurations(monkeypatch, tmp_path) -> None:
    import datasets

    from fspo_recipe.data.sources import prism

    prism._surveys.clear()  # noqa: SLF001
    files = {"conversations": SAMPLES / "prism" / "conversations.jsonl", "survey": SAMPLES / "prism" / "survey.jsonl"}
    asked = []

    class Split:
        def __init__(self, path: Path) -> None:
            self.records = [json.loads(line) for line in path.read_text().splitlines()]

        def to_dict(self) -> dict:
            keys = dict.fromkeys(k for r in self.records for k in r)
            return {k: [r.get(k) for r in self.records] for k in keys}

    def load_dataset(name, config=None, cache_dir=None):
        asked.append((name, config))
        return {"train": Split(files[config])}

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    assert prepare_main(["prism", "--out", str(tmp_path), "--shots", "2", "--no-progress"]) == 0
    assert asked == [("HannahRoseKirk/prism-alignment", "conversations"), ("HannahRoseKirk/prism-alignment", "survey")]
    local, _ = rows_of("prism", [str(SAMPLES / "prism")])
    summary = json.loads((tmp_path / "prism" / "summary.json").read_text())
    assert summary["rows_read"] == len(conversations()) and sum(summary["rows_skipped"].values()) > 0
    assert len(local["train"]) > 0


def test_personalllm_users_are_weightings_shared_across_splits_and_prompts_are_shared_across_users() -> None:
    from fspo_recipe.data.sources.personalllm import describe_weights, user_weights

    rows, report = rows_of("personalllm", [str(SAMPLES / "personalllm")], users=12, prompts_per_user=20,
                           prompt_pool=25)
    train, test = rows["train"], rows["test"]
    assert {r.user for r in train} == {r.user for r in test} == {f"u{i:02d}" for i in range(12)}
    weights = user_weights(12, 0.05, 0)
    assert all(abs(sum(w) - 1.0) < 1e-9 for w in weights)
    assert {r.user: r.user_description for r in train}["u03"] == describe_weights(weights[3])
    assert {r.question for r in train}.isdisjoint({r.question for r in test})  # held-out prompts
    by_question: dict[str, list] = {}
    for r in train:
        by_question.setdefault(r.question, []).append(r)
    shared = [rs for rs in by_question.values() if len({r.user for r in rs}) > 1]
    assert shared  # the same question for several users
    opposite = [(a, b) for rs in shared for a in rs for b in rs
                if (a.preferred, a.dispreferred) == (b.dispreferred, b.preferred)]
    assert opposite  # ... with opposite preferences between some of them
    assert len([r for r in train if r.user == "u00"]) == 20
    again, _ = rows_of("personalllm", [str(SAMPLES / "personalllm")], users=12, prompts_per_user=20, prompt_pool=25)
    assert again["train"] == train  # seeded: the same population and pairs
    other, _ = rows_of("personalllm", [str(SAMPLES / "personalllm")], users=12, prompts_per_user=20, prompt_pool=25,
                       population_seed=1)
    assert other["train"] != train
    best, _ = rows_of("personalllm", [str(SAMPLES / "personalllm")], users=3, prompts_per_user=5, pair="best-worst")
    assert len(best["train"]) == 15


def test_personalllm_bad_input_is_named(tmp_path, capsys) -> None:
    records = [json.loads(line) for line in (SAMPLES / "personalllm" / "train.jsonl").read_text().splitlines()[:6]]
    records[2]["response_4_gemma_7b"] = None  # one unscored response: the prompt keeps its other seven
    for k in range(1, 9):
        records[3][f"response_{k}"] = "" if k > 1 else records[3][f"response_{k}"]  # one response left: skipped
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    rows, report = rows_of("personalllm", [str(tmp_path / "ok")], users=2, prompts_per_user=5)
    assert report.skipped == {"prompt with fewer than two responses scored by every reward model": 1}
    assert all(r.row_id.split("/")[1] != str(records[3]["prompt_id"]) for r in rows["train"])
    del records[0]["response_2_beaver_7b"]
    for r in records:
        r.pop("response_2_beaver_7b", None)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert prepare_main(["personalllm", "--input", str(tmp_path / "bad"), "--out", str(tmp_path / "out"),
                         "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert "train.jsonl: missing score column(s) response_2_beaver_7b" in err and len(err.splitlines()) == 1


def test_personalllm_holds_users_out_by_default(tmp_path) -> None:
    """Its own train/test splits hold the same simulated users: without --split-mode the test users are others."""
    out = tmp_path / "data"
    assert prepare_main(["personalllm", "--input", str(SAMPLES / "personalllm"), "--out", str(out), "--users", "10",
                         "--prompts-per-user", "8", "--shots", "2", "--test-users", "3", "--no-progress"]) == 0
    summary = json.loads((out / "personalllm" / "summary.json").read_text())
    assert summary["split_mode"] == "heldout_users"
    users = {split: {json.loads(line)["user"] for line in (out / "personalllm" / f"{split}.jsonl").read_text()
                     .splitlines()} for split in ("train", "test")}
    assert len(users["test"]) == 3 and users["train"] and not users["train"] & users["test"]


@pytest.mark.slow
@pytest.mark.parametrize("source, extra", [
    ("prism", ["--split-mode", "heldout_users", "--test-users", "3"]),
    ("personalllm", ["--users", "16", "--prompts-per-user", "12", "--split-mode", "heldout_users", "--test-users",
                     "4"]),
])
def test_each_sample_trains_and_evaluates_end_to_end(source, extra, tmp_path) -> None:
    """fspo-prepare with two shots, two IPO steps of the tiny model, preference_eval on the held-out users."""
    from test_cli import metrics, run
    from test_models import fairseq2

    from fspo_recipe.models.tiny import write_tiny_assets

    data = tmp_path / "data"
    assert prepare_main([source, "--input", str(SAMPLES / source), "--out", str(data), "--shots", "2",
                         "--no-progress", *extra]) == 0
    write_tiny_assets(data, seed=0)
    train = tmp_path / "ipo"
    run(train, "fspo_ipo", f"common.assets.extra_path={data}", "model.name=fspo_tiny_llama",
        "criterion.config.reference_model.name=fspo_tiny_llama", f"dataset.name={source}_train",
        "dataset.batch_size=2", "trainer.dtype=float32", "criterion.config.reference_dtype=float32",
        "lr_scheduler.config.num_warmup_steps=0", "regime.num_steps=2", "regime.checkpoint_every_n_steps=2",
        "regime.publish_metrics_every_n_steps=1")
    assert [m["Step"] for m in metrics(train)] == [1, 2]
    proc = fairseq2("lm", "preference_eval", str(tmp_path / "eval"), "--no-sweep-dir", "--config",
                    f"common.assets.extra_path={data}", f"model.run_dir={train}", "reference.name=fspo_tiny_llama",
                    f"dataset={source}_test", "bootstrap_samples=20", "criterion.loss=ipo")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    test = (data / source / "test.jsonl").read_text().splitlines()
    assert result["overall"]["pairs"] == len(test) and len(result["per_user"]) == len({json.loads(t)["user"]
                                                                                        for t in test}) >= 3


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "85"])
def test_prism_ratings_that_are_not_finite_numbers_are_refused_or_counted(bad, tmp_path, capsys) -> None:
    """A NaN or infinite rating is an error naming the file and line (docs/reliability.md); a rating that is text is
    counted as such, never as a response without a rating."""
    data = tmp_path / "prism"
    shutil.copytree(SAMPLES / "prism", data)
    records = conversations()
    line = next(n for n, c in enumerate(records) if any(h["role"] == "model" and h["score"] is not None
                                                         for h in c["conversation_history"]))
    response = next(h for h in records[line]["conversation_history"] if h["role"] == "model" and h["score"] is not None)
    response["score"] = bad
    (data / "conversations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if isinstance(bad, str):
        _, report = rows_of("prism", [str(data)])
        assert report.skipped["rating that is str, not a number"] == 1
        assert report.skipped.get("response without a rating", 0) == rows_of("prism", [str(SAMPLES / "prism")])[1] \
            .skipped.get("response without a rating", 0)
        return
    assert prepare_main(["prism", "--input", str(data), "--out", str(tmp_path / "out"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert f"conversations.jsonl, line {line + 1}: the score of a response in turn" in err, err
    assert "expected a finite number" in err and len(err.splitlines()) == 1


def test_a_personalllm_score_that_is_not_finite_is_refused_naming_the_line(tmp_path, capsys) -> None:
    records = [json.loads(line) for line in (SAMPLES / "personalllm" / "train.jsonl").read_text().splitlines()[:6]]
    records[4]["response_3_gemma_7b"] = float("nan")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert prepare_main(["personalllm", "--input", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--users",
                         "2", "--prompts-per-user", "3", "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert "train.jsonl, line 5: response_3_gemma_7b is nan; expected a finite number" in err, err


def test_a_source_whose_every_row_is_dropped_says_why(tmp_path, capsys) -> None:
    """Every rated pair of the PRISM sample made a tie: the message names the reason, not only 'no training user'."""
    data = tmp_path / "prism"
    shutil.copytree(SAMPLES / "prism", data)
    records = conversations()
    for record in records:
        for h in record["conversation_history"]:
            if h["role"] == "model" and h["score"] is not None:
                h["score"] = 50
    (data / "conversations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert prepare_main(["prism", "--input", str(data), "--out", str(tmp_path / "out"), "--split-mode",
                         "heldout_users", "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert "every row was skipped" in err and "equal ratings (a tie)" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out" / "prism").exists()
