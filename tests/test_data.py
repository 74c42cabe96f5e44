"""Data preparation: grouping, splits, determinism, bad input, and the real readers on local files."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from conftest import REPO
from fspo_recipe.data import build as build_mod
from fspo_recipe.data.build import EpisodeOptions, build_user_episodes
from fspo_recipe.data.prepare import main as prepare_main, prepare
from fspo_recipe.data.sources import SOURCES, PreferenceRow, ReadReport, SourceSchemaError, read_source

SAMPLES = REPO / "datasets" / "samples"


def load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def source_rows(source: str) -> dict[str, str]:
    """row id -> user, for every row of a bundled sample."""
    users = {}
    for f in sorted((SAMPLES / source).glob("*.jsonl")):
        for i, row in enumerate(load(f)):
            users[f"{f.name}/{i}"] = str(row.get("scorer_level", row.get("level")))
    return users


@pytest.mark.parametrize("source", ["elix", "review", "roleplay"])
def test_every_shot_and_query_share_the_user(source, tmp_path) -> None:
    summary = prepare(source, [str(SAMPLES / source)], tmp_path, options=EpisodeOptions(num_shots=3), progress=False)
    owner = source_rows(source)
    episodes = load(tmp_path / source / "train.jsonl")
    assert len(episodes) == summary["splits"]["train"]["episodes"] > 0
    for ep in episodes:
        users = {owner[r] for r in ep["shot_row_ids"] + [ep["query_row_id"]]}
        assert users == {ep["user"]}
        assert len(ep["shot_row_ids"]) == ep["num_shots"] == 3
        assert ep["query_row_id"] not in ep["shot_row_ids"]
        assert ep["src"].count("# Example ") == 3


def test_episode_texts_come_from_the_traced_rows(tmp_path) -> None:
    prepare("elix", [str(SAMPLES / "elix")], tmp_path, options=EpisodeOptions(num_shots=2), progress=False)
    rows = {f"train.jsonl/{i}": r for i, r in enumerate(load(SAMPLES / "elix" / "train.jsonl"))}
    ep = load(tmp_path / "elix" / "train.jsonl")[0]
    query = rows[ep["query_row_id"]]
    preferred = query["response_x"] if query["label"] == 0 else query["response_y"]
    assert ep["tgt_chosen"] == f"## Preferred Response \n{preferred}\n"
    assert ep["src"].endswith(f"## Question \n{query['prompt']}\n")
    first = rows[ep["shot_row_ids"][0]]
    assert ep["src"].startswith(f"# Example 1\n## Question \n{first['prompt']}\n")
    dispreferred = query["response_y"] if query["label"] == 0 else query["response_x"]
    assert ep["answers"] == {"chosen": preferred, "rejected": dispreferred}  # the answers as fields, not re-parsed


@pytest.mark.parametrize("field, value, expected", [
    ("messages", [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
     "field 'messages' must end with the user's turn"),
    ("messages", [{"role": "bot", "content": "hi"}], "field 'messages[0]' must be an object with role"),
    ("messages", "hi", "field 'messages' must be a non-empty list"),
    ("answers", {"chosen": "a"}, "field 'answers' must be an object with string chosen and rejected"),
])
def test_malformed_structure_fields_are_named_with_file_and_line(tmp_path, field, value, expected) -> None:
    from fspo_recipe.data.jsonl import PreferenceDataError, read_preference_jsonl

    path = tmp_path / "d.jsonl"
    good = {"src": "q", "tgt_chosen": " a", "tgt_rejected": " b"}
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, field: value}) + "\n")
    with pytest.raises(PreferenceDataError, match=re.escape(f"d.jsonl, line 2: {expected}")):
        list(read_preference_jsonl(path))


def test_answers_of_files_prepared_without_the_field_come_from_their_targets(tmp_path) -> None:
    from fspo_recipe.data.jsonl import example_answers

    prepare("review", [str(SAMPLES / "review")], tmp_path, options=EpisodeOptions(num_shots=2, rationale="generated"),
            progress=False)
    for ep in load(tmp_path / "review" / "train.jsonl")[:20]:
        old = {k: v for k, v in ep.items() if k != "answers"}
        assert example_answers(old) == example_answers(ep) == (ep["answers"]["chosen"], ep["answers"]["rejected"])


def rows_of(user: str, n: int) -> list[PreferenceRow]:
    return [PreferenceRow(f"t/{i}", user, f"q{i}", f"p{i}", f"d{i}", "desc", "other") for i in range(n)]


def test_no_row_is_wasted_in_a_pass() -> None:
    options = EpisodeOptions(num_shots=4, num_passes=1)
    episodes = list(build_user_episodes("u", rows_of("u", 15), options))
    assert len(episodes) == 3
    used = Counter(r for ep in episodes for r in ep["shot_row_ids"] + [ep["query_row_id"]])
    assert sorted(used) == sorted(f"t/{i}" for i in range(15)) and set(used.values()) == {1}


def test_default_passes_and_merging() -> None:
    assert EpisodeOptions(num_shots=4).passes() == 10
    # 2 rows, 1 shot: only two distinct windows exist, however many passes.
    episodes = list(build_user_episodes("u", rows_of("u", 2), EpisodeOptions(num_shots=1, num_passes=50)))
    assert len(episodes) == 2


def test_same_seed_same_bytes_other_seed_other_episodes(tmp_path) -> None:
    outs = []
    for run, seed in (("a", 0), ("b", 0), ("c", 1)):
        prepare("roleplay", [str(SAMPLES / "roleplay")], tmp_path / run, options=EpisodeOptions(num_shots=2, seed=seed),
                split_mode="heldout_users", test_users=3, progress=False)
        outs.append({p.name: p.read_bytes() for p in (tmp_path / run / "roleplay").glob("*.jsonl")})
    assert outs[0] == outs[1]
    assert outs[0]["train.jsonl"] != outs[2]["train.jsonl"]


def test_heldout_users_never_appear_in_train(tmp_path) -> None:
    summary = prepare("roleplay", [str(SAMPLES / "roleplay")], tmp_path, options=EpisodeOptions(num_shots=2),
                      split_mode="heldout_users", test_users=3, valid_users=2, progress=False)
    users = {s: {ep["user"] for ep in load(tmp_path / "roleplay" / f"{s}.jsonl")} for s in ("train", "valid", "test")}
    assert len(users["test"]) == 3 and len(users["valid"]) == 2 and len(users["train"]) == 7
    assert not users["train"] & users["test"] and not users["train"] & users["valid"]
    assert summary["splits"]["test"]["users"] == 3


def test_review_interpolated_users(tmp_path) -> None:
    prepare("review", [str(SAMPLES / "review")], tmp_path, options=EpisodeOptions(num_shots=4),
            split_mode="interpolated", progress=False)
    train = {ep["user"] for ep in load(tmp_path / "review" / "train.jsonl")}
    test = {ep["user"] for ep in load(tmp_path / "review" / "test.jsonl")}
    assert train == {"positive", "negative", "concise", "verbose"}
    assert test == {"positive concise", "positive verbose", "negative concise", "negative verbose"}


def test_rationale_targets_describe_the_users(tmp_path) -> None:
    prepare("review", [str(SAMPLES / "review")], tmp_path, options=EpisodeOptions(num_shots=2, rationale="generated"),
            progress=False)
    for ep in load(tmp_path / "review" / "train.jsonl")[:50]:
        words = " and ".join(ep["user"].split())
        assert ep["tgt_chosen"].startswith(f"## User Description\nThis user prefers {words} reviews.\n")
        assert ep["tgt_rejected"].startswith("## User Description\nThis user prefers ")


def test_cards_and_summary(tmp_path) -> None:
    prepare("elix", [str(SAMPLES / "elix")], tmp_path, name="ex", options=EpisodeOptions(num_shots=4), progress=False)
    card = (tmp_path / "ex" / "ex_train.yaml").read_text()
    assert "name: ex_train\n" in card and "dataset_family: fspo_preference\n" in card and "data: train.jsonl" in card
    summary = json.loads((tmp_path / "ex" / "summary.json").read_text())
    assert summary["splits"]["train"]["users"] == 5 and set(summary["splits"]["train"]["prompt_chars"]) == {
        "p50", "p90", "p99", "p100"}


def test_parquet_and_json_array_inputs_read_the_same_rows(tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = load(SAMPLES / "elix" / "train.jsonl")
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "train-00000-of-00001.parquet")
    (tmp_path / "arr").mkdir()
    (tmp_path / "arr" / "train.json").write_text(json.dumps(records))
    a = read_source(SOURCES["elix"], [str(tmp_path / "train-00000-of-00001.parquet")], ReadReport())
    b = read_source(SOURCES["elix"], [str(tmp_path / "arr")], ReadReport())
    c = read_source(SOURCES["elix"], [str(SAMPLES / "elix" / "train.jsonl")], ReadReport())
    strip = lambda rows: [r[1:] for r in rows["train"]]  # noqa: E731 (row ids name the file)
    assert strip(a) == strip(b) == strip(c) and len(c["train"]) == len(records)


def test_hub_loader_code_path_on_a_local_directory(tmp_path, monkeypatch) -> None:
    """`datasets.load_dataset` is what reads a hub name; here it reads the same layout from disk, offline."""
    from fspo_recipe.data.sources.reading import load_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    splits = load_hub(str(SAMPLES / "roleplay"), str(tmp_path / "cache"))
    assert set(splits) == {"train", "test"}
    assert splits["train"]["score_persona"][0]["persona_description"].startswith("The user is")


# ---- bad input ---------------------------------------------------------------------------------------------


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_missing_column_names_it_and_the_schema(tmp_path) -> None:
    rows = [{k: v for k, v in r.items() if k != "scorer_level"} for r in load(SAMPLES / "elix" / "train.jsonl")]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(SourceSchemaError, match=r"train.jsonl: missing column\(s\) 'scorer_level' for the elix "
                                                r"schema. Expected columns: prompt \(the question\)"):
        read_source(SOURCES["elix"], [str(path)], ReadReport())


def test_bad_rows_are_counted_not_dropped_silently(tmp_path, capsys) -> None:
    rows = load(SAMPLES / "elix" / "train.jsonl")
    rows[0]["label"] = 2
    rows[1]["label"] = None
    rows[2]["response_x"] = "   "
    rows[3]["prompt"] = ""
    path = write_jsonl(tmp_path / "in" / "train.jsonl", rows)
    assert prepare_main(["elix", "--input", str(path), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "skipped 2 row(s): label not 0 or 1" in out
    assert "skipped 2 row(s): empty question, response or user" in out
    summary = json.loads((tmp_path / "out" / "elix" / "summary.json").read_text())
    assert summary["rows_skipped"] == {"label not 0 or 1": 2, "empty question, response or user": 2}


def test_users_with_too_few_rows_are_reported(tmp_path, capsys) -> None:
    rows = load(SAMPLES / "elix" / "train.jsonl")
    rows = [r for r in rows if r["scorer_level"] != "an expert"] + [
        r for r in rows if r["scorer_level"] == "an expert"][:3]
    path = write_jsonl(tmp_path / "in" / "train.jsonl", rows)
    assert prepare_main(["elix", "--input", str(path), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    assert "skipped 1 user(s) with fewer than 5 rows (3 rows)" in capsys.readouterr().out


def test_malformed_json_line_is_named(tmp_path, capsys) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(load(SAMPLES / "elix" / "train.jsonl")[0]) + "\n{not json\n")
    assert prepare_main(["elix", "--input", str(path), "--out", str(tmp_path / "out"), "--no-progress"]) == 1
    assert f"{path}, line 2, column 2: not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "out" / "elix").exists()


def test_a_crash_leaves_no_partial_output(tmp_path, monkeypatch) -> None:
    good = prepare("elix", [str(SAMPLES / "elix")], tmp_path, options=EpisodeOptions(num_shots=4), progress=False)
    before = {p.name: p.read_bytes() for p in (tmp_path / "elix").iterdir()}
    real = build_mod.build_split_episodes

    def crash_midway(rows, options, stats):
        for i, ep in enumerate(real(rows, options, stats)):
            if i == 100:
                raise RuntimeError("disk full")
            yield ep

    monkeypatch.setattr("fspo_recipe.data.prepare.build_split_episodes", crash_midway)
    with pytest.raises(RuntimeError, match="disk full"):
        prepare("elix", [str(SAMPLES / "elix")], tmp_path, options=EpisodeOptions(num_shots=2), progress=False,
                overwrite=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "elix").iterdir()} == before  # the earlier output, intact
    assert [p.name for p in tmp_path.iterdir()] == ["elix"]  # no .partial directory left
    assert good["splits"]["train"]["episodes"] > 100


def test_token_percentiles_with_a_fairseq2_tokenizer(tmp_path) -> None:
    from fspo_recipe.models.tiny import write_tiny_assets

    write_tiny_assets(tmp_path / "tiny", seed=0)
    assert prepare_main(["elix", "--input", str(SAMPLES / "elix"), "--out", str(tmp_path / "out"), "--shots", "2",
                         "--tokenizer", "fspo_tiny_llama", "--assets-dir", str(tmp_path / "tiny"), "--no-progress"]) == 0
    train = json.loads((tmp_path / "out" / "elix" / "summary.json").read_text())["splits"]["train"]
    # Byte-level tokenizer on ASCII text: one token per character, plus the beginning-of-sequence token.
    assert {k: v + 1 for k, v in train["prompt_chars"].items()} == train["prompt_tokens"]
    assert train["prompt_tokens_sample"] == train["episodes"]


def test_repeated_rows_are_counted_and_dropped(tmp_path) -> None:
    rows = load(SAMPLES / "elix" / "train.jsonl")
    data = tmp_path / "in"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows + rows[:7]))  # 7 rows again
    (data / "test.jsonl").write_text(json.dumps(rows[10]) + "\n")  # a training row in the test split too
    summary = prepare("elix", [str(data)], tmp_path / "out", options=EpisodeOptions(num_shots=2), progress=False)
    assert summary["rows_skipped"][build_mod.DUPLICATE_ROW] == 8
    episodes = load(tmp_path / "out" / "elix" / "train.jsonl")
    used = {r for ep in episodes for r in ep["shot_row_ids"] + [ep["query_row_id"]]}
    assert not any(f"train.jsonl/{i}" in used for i in range(len(rows), len(rows) + 7))
    assert "train.jsonl/10" not in used  # the repeated test pair is kept once, in the file read first (test)


def test_a_query_is_never_answered_by_its_own_shots() -> None:
    # Five questions asked twice each with other answers, and one asked four times: windows often repeat a question.
    rows = [PreferenceRow(f"s/{i}", "u", f"q{min(i // 2, 5)}", f"good {i}", f"bad {i}", "d", "d") for i in range(14)]
    stats = build_mod.SplitStats()
    episodes = list(build_user_episodes("u", rows, EpisodeOptions(num_shots=3, num_passes=40), stats=stats))
    assert episodes
    by_id = {r.row_id: r for r in rows}
    for ep in episodes:
        assert by_id[ep["query_row_id"]].question not in {by_id[r].question for r in ep["shot_row_ids"]}
    # Windows of rows that all share their questions (two and two) have no possible query: skipped and counted.
    pairs = [PreferenceRow(f"s/{i}", "u", f"q{i // 2}", f"good {i}", f"bad {i}", "d", "d") for i in range(4)]
    stats = build_mod.SplitStats()
    assert list(build_user_episodes("u", pairs, EpisodeOptions(num_shots=1, num_passes=30), stats=stats))
    assert stats.windows_one_question > 0


def test_a_nan_score_is_refused_naming_the_file_and_line(tmp_path, capsys) -> None:
    good = {"history": "Why?", "human_ref_A": "Because.", "human_ref_B": "No idea.", "score_A": 10, "score_B": 1,
            "labels": 1}
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps(good) + "\n\n" + json.dumps({**good, "score_B": float("nan")}) + "\n")
    assert prepare_main(["shp", "--input", str(data), "--out", str(tmp_path / "out"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"{data}, line 3: score_B is nan; expected a finite number" in err
    assert not (tmp_path / "out" / "shp").exists()


def test_a_field_of_the_wrong_type_is_reported_as_such(tmp_path) -> None:
    rows = load(SAMPLES / "elix" / "train.jsonl")
    rows[3]["prompt"] = ["a", "list"]
    rows[4]["response_y"] = 42
    data = tmp_path / "in"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = prepare("elix", [str(data)], tmp_path / "out", options=EpisodeOptions(num_shots=2), progress=False)
    assert summary["rows_skipped"] == {"field 'prompt' is a list, not text": 1,
                                       "field 'response_y' is a number, not text": 1}


@pytest.mark.parametrize("source, field", [("stackexchange", "pm_score"), ("oasst2", "rank")])
def test_every_scored_source_refuses_a_score_that_is_not_finite(source, field, tmp_path, capsys) -> None:
    """The promise of docs/reliability.md for each source with scores (shp above; prism and personalllm in
    tests/test_population_sources.py): a NaN or infinite score is an error naming the file and line."""
    sample = REPO / "datasets" / "samples" / source
    records = [json.loads(line) for line in (sample / "train.jsonl").read_text().splitlines()]
    if source == "stackexchange":
        line = 1
        records[0]["answers"][1]["pm_score"] = float("inf")
    else:
        line = next(i for i, r in enumerate(records) if r.get("rank") is not None) + 1
        records[line - 1]["rank"] = float("nan")
    data = tmp_path / "in"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    for other in sample.iterdir():
        if other.name != "train.jsonl":
            (data / other.name).write_bytes(other.read_bytes())
    assert prepare_main([source, "--input", str(data), "--out", str(tmp_path / "out"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert f"train.jsonl, line {line}: {field} is" in err and "expected a finite number" in err, err
