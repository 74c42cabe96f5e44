"""Plain preference data sets (no users, no shots): Anthropic HH, SHP, StackExchange, OpenAssistant2 and UltraFeedback
through fspo-prepare, training and evaluation."""

from __future__ import annotations

import json
import subprocess

import pytest

from conftest import REPO, cli_env
from fspo_recipe.data.build import DUPLICATE_ROW
from fspo_recipe.data.prepare import main as prepare_main

SAMPLES = REPO / "datasets" / "samples"
PLAIN_SOURCES = ("hh", "ultrafeedback", "shp", "stackexchange", "oasst2")


def dpo_code_split(row: dict) -> tuple[str, str, str]:
    """The original DPO code's HH split (extract_anthropic_prompt, then slicing both dialogues by its length)."""
    search = "\n\nAssistant:"
    prompt = row["chosen"][: row["chosen"].rfind(search) + len(search)]
    return prompt, row["chosen"][len(prompt):], row["rejected"][len(prompt):]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("plain")
    for source in PLAIN_SOURCES:
        extra = ["--test-fraction", "0.25"] if source == "stackexchange" else []  # the sample is too small for 1%
        assert prepare_main([source, "--input", str(SAMPLES / source), "--out", str(out), "--no-progress",
                             *extra]) == 0
    from fspo_recipe.models.tiny import write_tiny_assets

    write_tiny_assets(out, seed=0)
    return out


def test_hh_splits_as_the_dpo_code_and_reports_pairs_with_different_prompts(prepared) -> None:
    seen, duplicates = set(), 0
    for split in ("test", "train"):  # the order files are read in: a repeated pair is dropped where it repeats
        rows = [json.loads(line) for line in (SAMPLES / "hh" / f"{split}.jsonl").read_text().splitlines()]
        got = {e["id"]: e for e in map(json.loads, (prepared / "hh" / f"{split}.jsonl").read_text().splitlines())}
        for i, row in enumerate(rows):
            prompt, chosen, rejected = dpo_code_split(row)
            if not row["rejected"].startswith(prompt):
                assert f"{split}.jsonl/{i}" not in got  # the DPO code would pair a wrong rejected response
            elif (prompt, chosen, rejected) in seen:
                assert f"{split}.jsonl/{i}" not in got  # a duplicate of an earlier row
                duplicates += 1
            else:
                seen.add((prompt, chosen, rejected))
                e = got[f"{split}.jsonl/{i}"]
                assert (e["src"], e["tgt_chosen"], e["tgt_rejected"]) == (prompt, chosen, rejected)  # byte for byte
                assert e["user"] == "(no user)" and "episode" not in e
                # the conversation as structure, read from the source's text once, at preparation
                assert e["messages"][-1]["role"] == "user" and e["messages"][0]["content"] in prompt
                assert prompt == "".join(f"\n\n{'Human' if m['role'] == 'user' else 'Assistant'}: {m['content']}"
                                         for m in e["messages"]) + "\n\nAssistant:"
    summary = json.loads((prepared / "hh" / "summary.json").read_text())
    assert duplicates > 0 and summary["rows_skipped"] == {"chosen and rejected dialogues with different prompts": 4,
                                                          DUPLICATE_ROW: duplicates}
    assert (prepared / "hh" / "hh_train.yaml").is_file() and (prepared / "hh" / "hh_test.yaml").is_file()


def test_ultrafeedback_takes_the_assistant_messages(prepared) -> None:
    rows = [json.loads(line) for line in (SAMPLES / "ultrafeedback" / "train_prefs.jsonl").read_text().splitlines()]
    got = [json.loads(line) for line in (prepared / "ultrafeedback" / "train.jsonl").read_text().splitlines()]
    assert len(got) == len({(r["prompt"], json.dumps(r["chosen"]), json.dumps(r["rejected"])) for r in rows})
    assert got[0]["src"] == rows[0]["prompt"] and got[0]["tgt_chosen"] == rows[0]["chosen"][1]["content"]
    assert got[0]["tgt_rejected"] == rows[0]["rejected"][1]["content"]


def test_bad_plain_input_is_refused_with_the_schema(tmp_path, capsys) -> None:
    bad = tmp_path / "train.jsonl"
    bad.write_text(json.dumps({"chosen": "\n\nHuman: hi\n\nAssistant: yo"}) + "\n")
    assert prepare_main(["hh", "--input", str(bad), "--out", str(tmp_path / "o"), "--no-progress"]) != 0
    err = capsys.readouterr().err
    assert "missing column(s) 'rejected' for the hh schema" in err and "Expected columns: chosen (" in err
    assert prepare_main(["hh", "--input", str(SAMPLES / "hh"), "--out", str(tmp_path / "o"), "--shots", "2",
                         "--no-progress"]) != 0
    assert "hh holds plain preference pairs without users: use --shots 0" in capsys.readouterr().err
    assert not (tmp_path / "o" / "hh").exists()


PER_USER_OPTIONS = ("--shots", "--passes", "--split-mode", "--test-users", "--valid-users", "--test-user-names",
                    "--no-dispreferred", "--rationale")


@pytest.mark.parametrize("source", PLAIN_SOURCES)
def test_the_help_of_a_plain_source_lists_no_per_user_option(source, capsys) -> None:
    with pytest.raises(SystemExit):
        prepare_main([source, "--help"])
    plain = capsys.readouterr().out
    with pytest.raises(SystemExit):
        prepare_main(["elix", "--help"])
    per_user = capsys.readouterr().out
    for option in PER_USER_OPTIONS:
        assert f"{option} " in per_user and f"{option} " not in plain, option
    assert "--seed SEED" in plain and "--test-fraction" in plain  # what does apply stays


def fairseq2(*args: str) -> subprocess.CompletedProcess:
    from test_cli import FAIRSEQ2

    return subprocess.run([FAIRSEQ2, *args], capture_output=True, text=True, env=cli_env(COLUMNS="400"), cwd=REPO,
                          timeout=600)


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def examples(prepared, source: str, split: str) -> dict[str, dict]:
    return {e["id"]: e for e in read_jsonl(prepared / source / f"{split}.jsonl")}


def test_shp_pairs_as_the_dpo_code_with_its_score_ratio_filter(prepared, tmp_path) -> None:
    for file, split in (("train.json", "train"), ("test.json", "test")):
        got = examples(prepared, "shp", split)
        rows = read_jsonl(SAMPLES / "shp" / file)
        expected = {}
        for i, row in enumerate(rows):  # the DPO code's get_shp, pair by pair
            if max(row["score_A"] / row["score_B"], row["score_B"] / row["score_A"]) < 2:
                continue
            a, b = " " + row["human_ref_A"], " " + row["human_ref_B"]
            expected[f"{file}/{i}"] = ("\n\nHuman: " + row["history"] + "\n\nAssistant:",
                                       *((a, b) if row["labels"] == 1 else (b, a)))
        assert {k: (e["src"], e["tgt_chosen"], e["tgt_rejected"]) for k, e in got.items()} == expected
        assert 0 < len(expected) < len(rows)  # the sample has pairs the filter drops
    skipped = json.loads((prepared / "shp" / "summary.json").read_text())["rows_skipped"]
    assert skipped == {"score ratio below 2 (--min-score-ratio)": 10}
    # Every pair with --min-score-ratio 1; at most one pair per post with --max-pairs-per-prompt 1.
    assert prepare_main(["shp", "--input", str(SAMPLES / "shp"), "--out", str(tmp_path), "--no-progress",
                         "--min-score-ratio", "1", "--max-pairs-per-prompt", "1", "--name", "one"]) == 0
    rows = read_jsonl(SAMPLES / "shp" / "train.json")
    got = read_jsonl(tmp_path / "one" / "train.jsonl")
    assert len(got) == len({r["post_id"] for r in rows}) and len({e["src"] for e in got}) == len(got)
    summary = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert summary["min_score_ratio"] == 1.0 and summary["max_pairs_per_prompt"] == 1
    assert summary["rows_skipped"] == {"more than 1 pairs of one prompt (--max-pairs-per-prompt)": len(rows) - len(got)
                                       + sum(1 for r in read_jsonl(SAMPLES / "shp" / "test.json")) - len(
                                           read_jsonl(tmp_path / "one" / "test.jsonl"))}


@pytest.mark.parametrize("html, text", [
    ("<p>Use <code>x</code> here &amp; <a href='u'>there</a>.</p>\n<pre><code>a = 1\n</code></pre>",
     "Use  here & .\n\n<code>a = 1\n</code>"),  # text inside a paragraph's tags is dropped, as in the DPO code
    ("<ul><li>gone</li></ul><p>kept &lt;3</p><blockquote><p>quoted, dropped</p></blockquote>", "kept <3"),
    ("<pre>no code</pre><pre><code>1</code><b><code>2</code></b></pre><code>top</code>",
     "<code>1</code>\n\n<code>2</code>\n\n<code>top</code>"),
    ("loose text<p>a<br>b<img src='x'/>c</p><p>open", "abc\n\nopen"),
    ("<p>x <!-- c --> &unknown; &#65;&#x42;</p>", "x  c  &unknown AB"),  # a comment counts as text there
])
def test_stackexchange_html_is_stripped_as_the_dpo_code_does(html: str, text: str) -> None:
    from fspo_recipe.data.sources import strip_html

    assert strip_html(html) == text


def test_stackexchange_pairs_every_two_answers_and_holds_out_whole_questions(prepared, tmp_path) -> None:
    from fspo_recipe.data.sources import strip_html

    rows = read_jsonl(SAMPLES / "stackexchange" / "train.jsonl")
    got = {**examples(prepared, "stackexchange", "train"), **examples(prepared, "stackexchange", "test")}
    expected, ties = {}, 0
    for i, row in enumerate(rows):
        answers = row["answers"]
        for j in range(len(answers)):
            for k in range(j + 1, len(answers)):
                if answers[j]["pm_score"] == answers[k]["pm_score"]:
                    ties += 1
                    continue
                best, worst = (j, k) if answers[j]["pm_score"] > answers[k]["pm_score"] else (k, j)
                expected[f"train.jsonl/{i}/{j}-{k}"] = (
                    "\n\nHuman: " + strip_html(row["question"]) + "\n\nAssistant:",
                    " " + strip_html(answers[best]["text"]), " " + strip_html(answers[worst]["text"]))
    assert {k: (e["src"], e["tgt_chosen"], e["tgt_rejected"]) for k, e in got.items()} == expected and ties > 0
    test_prompts = {e["src"] for e in read_jsonl(prepared / "stackexchange" / "test.jsonl")}
    train_prompts = {e["src"] for e in read_jsonl(prepared / "stackexchange" / "train.jsonl")}
    assert test_prompts and not test_prompts & train_prompts  # whole questions held out
    assert 0.1 < len(test_prompts) / len(test_prompts | train_prompts) < 0.4  # --test-fraction 0.25
    # The default (1%, as the DPO code) on the 120-question sample, and no test split at all with 0.
    assert prepare_main(["stackexchange", "--input", str(SAMPLES / "stackexchange"), "--out", str(tmp_path),
                         "--no-progress", "--test-fraction", "0", "--name", "none"]) == 0
    assert not (tmp_path / "none" / "test.jsonl").exists()


def test_oasst2_pairs_ranked_sibling_replies_after_the_conversation_so_far(prepared) -> None:
    rows = read_jsonl(SAMPLES / "oasst2" / "train.jsonl")
    by_id = {r["message_id"]: r for r in rows}
    got = examples(prepared, "oasst2", "train")
    assert got and all(e["src"].startswith("\n\nHuman: ") and e["src"].endswith("\n\nAssistant:") for e in got.values())
    for key, e in got.items():
        i, j = map(int, key.split("/")[1].split("-"))
        better, worse = rows[i], rows[j]
        assert better["parent_id"] == worse["parent_id"] and better["rank"] < worse["rank"]
        assert (e["tgt_chosen"], e["tgt_rejected"]) == (" " + better["text"], " " + worse["text"])
        turns, at = [], better["parent_id"]
        while at is not None:
            turns.append(by_id[at])
            at = by_id[at]["parent_id"]
        assert e["src"] == "".join(("\n\nHuman: " if m["role"] == "prompter" else "\n\nAssistant: ") + m["text"]
                                   for m in reversed(turns)) + "\n\nAssistant:"
        assert e["messages"] == [{"role": "user" if m["role"] == "prompter" else "assistant", "content": m["text"]}
                                 for m in reversed(turns)]
    used = {int(i) for key in got for i in key.split("/")[1].split("-")}
    assert not any(rows[i]["deleted"] or rows[i]["rank"] is None for i in used)
    follow_ups = [e for e in got.values() if e["src"].count("\n\nHuman: ") == 2]
    assert follow_ups  # replies to the second user turn carry the whole conversation
    valid = read_jsonl(prepared / "oasst2" / "valid.jsonl")  # OpenAssistant2's validation split
    assert valid and (prepared / "oasst2" / "oasst2_valid.yaml").is_file()


def test_oasst2_reply_whose_parent_is_missing_is_skipped_and_counted(tmp_path, capsys) -> None:
    rows = read_jsonl(SAMPLES / "oasst2" / "validation.jsonl")
    root = rows[0]["message_id"]
    rows = [r for r in rows if r["message_id"] != root]  # the first tree loses its root prompt
    path = tmp_path / "validation.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert prepare_main(["oasst2", "--input", str(path), "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    skipped = json.loads((tmp_path / "o" / "oasst2" / "summary.json").read_text())["rows_skipped"]
    orphans = sum(1 for r in rows if r["role"] == "assistant" and r["rank"] is not None and not r["deleted"]
                  and r["message_tree_id"] == root)
    assert skipped["a reply whose conversation does not reach its root prompt"] == orphans > 0


@pytest.mark.parametrize("source, row, missing", [
    ("shp", {"history": "q", "human_ref_A": "a", "human_ref_B": "b", "score_A": 3, "score_B": 1}, "'labels'"),
    ("stackexchange", {"question": "<p>q</p>"}, "'answers'"),
    ("oasst2", {"message_id": "m", "parent_id": None, "role": "prompter", "text": "hi"}, "'rank'"),
])
def test_new_plain_sources_name_missing_columns_and_the_schema(tmp_path, capsys, source, row, missing) -> None:
    bad = tmp_path / "train.jsonl"
    bad.write_text(json.dumps(row) + "\n")
    assert prepare_main([source, "--input", str(bad), "--out", str(tmp_path / "o"), "--no-progress"]) != 0
    err = capsys.readouterr().err
    assert f"{bad}: missing column(s) {missing} for the {source} schema" in err and "Expected columns:" in err
    assert not (tmp_path / "o" / source).exists()


def test_empty_texts_are_counted(tmp_path) -> None:
    rows = read_jsonl(SAMPLES / "shp" / "train.json")[:3]
    rows[0]["human_ref_A"] = "   "
    (tmp_path / "train.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert prepare_main(["shp", "--input", str(tmp_path / "train.json"), "--out", str(tmp_path / "o"),
                         "--no-progress", "--min-score-ratio", "1"]) == 0
    summary = json.loads((tmp_path / "o" / "shp" / "summary.json").read_text())
    assert summary["rows_skipped"] == {"empty question, response or user": 1}
    assert summary["splits"]["train"]["episodes"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("card", ["ultrafeedback_train", "shp_train", "stackexchange_train", "oasst2_train"])
def test_plain_cards_train_with_fspo_dpo(prepared, tmp_path, card) -> None:
    run = tmp_path / "dpo"
    proc = fairseq2("lm", "preference_finetune", str(run), "--preset", "fspo_dpo", "--no-sweep-dir", "--config",
                    f"common.assets.extra_path={prepared}", "model.name=fspo_tiny_llama", f"dataset.name={card}",
                    "criterion.config.reference_model.name=fspo_tiny_llama", "dataset.batch_size=4",
                    "regime.num_steps=1", "trainer.dtype=float32", "criterion.config.reference_dtype=float32",
                    "lr_scheduler.config.num_warmup_steps=0", "regime.publish_metrics_every_n_steps=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = read_jsonl(run / "metrics" / "train.jsonl")
    assert [m["Step"] for m in metrics] == [1] and metrics[0]["Criterion Loss"] > 0


@pytest.mark.slow
def test_hh_trains_with_dpo_and_evaluates_without_users(prepared, tmp_path) -> None:
    run = tmp_path / "dpo"
    proc = fairseq2("lm", "preference_finetune", str(run), "--preset", "fspo_dpo", "--no-sweep-dir", "--config",
                    f"common.assets.extra_path={prepared}", "model.name=fspo_tiny_llama", "dataset.name=hh_train",
                    "criterion.config.reference_model.name=fspo_tiny_llama",
                    "dataset.batch_size=4", "regime.num_steps=2", "regime.checkpoint_every_n_steps=2",
                    "trainer.dtype=float32", "criterion.config.reference_dtype=float32",
                    "lr_scheduler.config.num_warmup_steps=0", "regime.publish_metrics_every_n_steps=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = [json.loads(line) for line in (run / "metrics" / "train.jsonl").read_text().splitlines()]
    assert [m["Step"] for m in metrics] == [1, 2]
    out = tmp_path / "eval"
    proc = fairseq2("lm", "preference_eval", str(out), "--no-sweep-dir", "--config",
                    f"common.assets.extra_path={prepared}", f"model.run_dir={run}", "reference.name=fspo_tiny_llama",
                    "dataset=hh_test", "criterion.loss=dpo", "bootstrap_samples=50")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "metrics.json").read_text())
    assert result["overall"]["pairs"] == 30 and list(result["per_user"]) == ["(no user)"]
    assert 0.0 <= result["overall"]["reward_accuracy"] <= 1.0 and result["shots"] == {}


def test_hub_splits_are_named_and_chosen_as_the_source_publishes_them(monkeypatch, tmp_path) -> None:
    """From the hub (datasets.load_dataset, replaced here by the sample's rows): UltraFeedback's test_prefs is the
    test split and its *_sft / *_gen splits are not read; OpenAssistant2's validation is valid."""
    import datasets

    def rows(path):
        return [json.loads(line) for line in path.read_text().splitlines()]

    class Split:
        def __init__(self, records):
            self.records = records

        def to_dict(self):
            return {k: [r.get(k) for r in self.records] for k in self.records[0]}

    uf = SAMPLES / "ultrafeedback"
    hub = {"HuggingFaceH4/ultrafeedback_binarized": {
        "train_prefs": Split(rows(uf / "train_prefs.jsonl")), "test_prefs": Split(rows(uf / "test_prefs.jsonl")),
        "train_sft": Split(rows(uf / "train_prefs.jsonl")), "test_gen": Split(rows(uf / "test_prefs.jsonl"))},
        "OpenAssistant/oasst2": {"train": Split(rows(SAMPLES / "oasst2" / "train.jsonl")),
                                 "validation": Split(rows(SAMPLES / "oasst2" / "validation.jsonl"))}}
    monkeypatch.setattr(datasets, "load_dataset", lambda name, config=None, cache_dir=None: hub[name])
    assert prepare_main(["ultrafeedback", "--out", str(tmp_path), "--no-progress"]) == 0
    summary = json.loads((tmp_path / "ultrafeedback" / "summary.json").read_text())
    assert summary["rows_read"] == len(rows(uf / "train_prefs.jsonl")) + len(rows(uf / "test_prefs.jsonl"))
    assert {s: i["episodes"] for s, i in summary["splits"].items()} == {  # repeated pairs dropped (test read first)
        "train": 118, "test": 28}
    assert summary["rows_skipped"] == {DUPLICATE_ROW: 14}
    assert prepare_main(["oasst2", "--out", str(tmp_path), "--no-progress"]) == 0
    assert set(json.loads((tmp_path / "oasst2" / "summary.json").read_text())["splits"]) == {"train", "valid"}
