"""Precomputed reference scores: the command, its resume, and identical training losses."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import REPO
from test_cli import CPU_TINY, metrics, run
from fspo_recipe.scoring.reference import main as score_main

SAMPLE = REPO / "datasets" / "samples" / "fspo_sample" / "train.jsonl"


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    from fspo_recipe.models.tiny import write_tiny_assets

    root = tmp_path_factory.mktemp("ref")
    write_tiny_assets(root / "assets", seed=0)
    out = root / "scored.jsonl"
    assert score_main(["--model", "fspo_tiny_llama", "--assets-dir", str(root / "assets"), "--input", str(SAMPLE),
                       "--output", str(out), "--batch-size", "5", "--no-progress"]) == 0
    return root, out


def test_scores_are_added_to_every_line(scored) -> None:
    _, out = scored
    src = [json.loads(line) for line in SAMPLE.read_text().splitlines()]
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(got) == len(src)
    for a, b in zip(src, got):
        assert {k: b[k] for k in a} == a
        assert b["reference_score_chosen"] < 0.0 and b["reference_score_rejected"] < 0.0
    assert not out.with_name(out.name + ".partial").exists()


def interrupted_run(monkeypatch, args: list[str], after_chunks: int) -> None:
    """Run fspo-score-reference and stop it (Ctrl-C) when ``after_chunks`` chunks are written."""
    import fspo_recipe.scoring.reference as reference

    real, calls = reference.score_pairs, []

    def score_pairs(*a, **k):
        calls.append(1)
        if len(calls) > after_chunks:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(reference, "score_pairs", score_pairs)
    with pytest.raises(KeyboardInterrupt):
        score_main(args)
    monkeypatch.setattr(reference, "score_pairs", real)


def test_resume_after_interruption(scored, tmp_path, monkeypatch, capsys) -> None:
    root, full = scored
    out = tmp_path / "scored.jsonl"
    args = ["--model", "fspo_tiny_llama", "--assets-dir", str(root / "assets"), "--input", str(SAMPLE),
            "--output", str(out), "--batch-size", "3", "--no-progress"]
    monkeypatch.setattr("fspo_recipe.scoring.reference.CHUNK_SIZE", 10)
    interrupted_run(monkeypatch, args, after_chunks=2)
    partial = tmp_path / "scored.jsonl.partial"
    assert len(partial.read_text().splitlines()) == 20
    lines = full.read_text().splitlines(keepends=True)
    with partial.open("a") as fp:  # killed in the middle of writing the 21st line
        fp.write(lines[20][:37])
    assert score_main(args) == 0
    assert "not resuming" not in capsys.readouterr().err
    resumed = [json.loads(line) for line in out.read_text().splitlines()]
    expected = [json.loads(line) for line in lines]
    assert [r["id"] for r in resumed] == [r["id"] for r in expected]
    for a, b in zip(resumed, expected):  # other batch sizes: float32 rounding only
        assert a["reference_score_chosen"] == pytest.approx(b["reference_score_chosen"], abs=1e-3)


@pytest.mark.parametrize("change", ["weights", "dtype", "input"])
def test_a_partial_of_other_weights_dtype_or_input_is_started_over(scored, tmp_path, monkeypatch, capsys, change
                                                                   ) -> None:
    from fspo_recipe.models.tiny import write_tiny_assets

    root, full = scored
    out = tmp_path / "scored.jsonl"
    common = ["--model", "fspo_tiny_llama", "--output", str(out), "--batch-size", "8", "--no-progress"]
    other = tmp_path / "other_assets"  # the same card name, other weights
    write_tiny_assets(other, seed=1)
    data = tmp_path / "data.jsonl"
    shutil.copy(SAMPLE, data)
    monkeypatch.setattr("fspo_recipe.scoring.reference.CHUNK_SIZE", 16)
    interrupted_run(monkeypatch, [*common, "--assets-dir", str(other if change == "weights" else root / "assets"),
                                  "--input", str(data), "--dtype", "bfloat16" if change == "dtype" else "float32"],
                    after_chunks=2)
    if change == "input":
        data.write_text("".join(reversed(SAMPLE.read_text().splitlines(keepends=True))))
    assert score_main([*common, "--assets-dir", str(root / "assets"), "--input", str(data)]) == 0
    err = capsys.readouterr().err
    assert "not resuming" in err and ("weights" if change == "weights" else change) in err
    got = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    for r in map(json.loads, full.read_text().splitlines()):  # every score is this model's, none the partial's
        assert got[r["id"]]["reference_score_chosen"] == pytest.approx(r["reference_score_chosen"], abs=1e-3)


def test_a_partial_with_foreign_lines_or_no_record_is_started_over(scored, tmp_path, monkeypatch, capsys) -> None:
    root, full = scored
    out = tmp_path / "scored.jsonl"
    args = ["--model", "fspo_tiny_llama", "--assets-dir", str(root / "assets"), "--input", str(SAMPLE),
            "--output", str(out), "--no-progress"]
    monkeypatch.setattr("fspo_recipe.scoring.reference.CHUNK_SIZE", 10)
    partial, record = out.with_name("scored.jsonl.partial"), out.with_name("scored.jsonl.partial.json")
    for damage, message in (("lines", "line 1 is not line 1 of the input"), ("record", "has no record")):
        interrupted_run(monkeypatch, args, after_chunks=1)
        if damage == "lines":  # a hand-edited partial: another example's scores on line 1
            lines = partial.read_text().splitlines(keepends=True)
            partial.write_text("".join([lines[1], lines[0], *lines[2:]]))
        else:
            record.unlink()
        assert score_main(args) == 0
        assert message in capsys.readouterr().err
        got, expected = (list(map(json.loads, f.read_text().splitlines())) for f in (out, full))
        assert [r["id"] for r in got] == [r["id"] for r in expected]
        for a, b in zip(got, expected):  # other batches: float32 rounding only
            assert a["reference_score_chosen"] == pytest.approx(b["reference_score_chosen"], abs=1e-3)
        out.unlink()


def hold_lock(path, *, directory: bool):
    """A process that holds the output lock of ``path`` until it is killed; returns it once it holds it."""
    import subprocess
    import sys

    code = ("import sys, time; from pathlib import Path; from fspo_recipe.lock import OutputLock; "
            f"OutputLock(Path(sys.argv[1]), 'a test', directory={directory}).acquire(); print('held', flush=True); "
            "time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_one_run_per_output_and_never_the_input_or_a_foreign_file(scored, tmp_path, capsys) -> None:
    root, full = scored
    out = tmp_path / "scored.jsonl"
    common = ["--model", "fspo_tiny_llama", "--assets-dir", str(root / "assets"), "--no-progress"]
    holder = hold_lock(out, directory=False)
    try:
        assert score_main([*common, "--input", str(SAMPLE), "--output", str(out)]) == 1
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err
    assert f"in use by process {holder.pid} on " in err and not out.exists()
    assert not out.with_name(out.name + ".partial").exists()

    data = tmp_path / "data.jsonl"
    shutil.copy(SAMPLE, data)
    before = data.read_bytes()
    for extra in ([], ["--overwrite"]):  # the input is never the output
        assert score_main([*common, "--input", str(data), "--output", str(data), *extra]) == 1
        assert "is the --input" in capsys.readouterr().err and data.read_bytes() == before
    mine = tmp_path / "notes.jsonl"
    mine.write_text('{"my": "notes"}\n')
    assert score_main([*common, "--input", str(data), "--output", str(mine)]) == 1
    assert "pass --overwrite" in capsys.readouterr().err
    assert score_main([*common, "--input", str(data), "--output", str(mine), "--overwrite"]) == 1
    assert "holds no reference scores" in capsys.readouterr().err and mine.read_text() == '{"my": "notes"}\n'
    shutil.copy(full, out)  # a file of reference scores: replaced with --overwrite only
    assert score_main([*common, "--input", str(data), "--output", str(out)]) == 1
    assert score_main([*common, "--input", str(data), "--output", str(out), "--overwrite"]) == 0


@pytest.mark.slow
def test_precomputed_reference_trains_like_the_live_reference(scored, tmp_path) -> None:
    root, out = scored
    common = [f"common.assets.extra_path={root / 'assets'}", "model.name=fspo_tiny_llama", *CPU_TINY,
              "criterion.config.loss=dpo", "optimizer.config.lr=1e-3"]
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(SAMPLE, data / "train.jsonl")
    run(tmp_path / "live", "fspo_ipo", *common, "criterion.config.reference_model.name=fspo_tiny_llama",
        f"dataset.path={data}")
    scored_dir = tmp_path / "scored"
    scored_dir.mkdir()
    shutil.copy(out, scored_dir / "train.jsonl")
    run(tmp_path / "stored", "fspo_ipo", *common, "criterion.config.reference_model=null", f"dataset.path={scored_dir}")
    live, stored = metrics(tmp_path / "live"), metrics(tmp_path / "stored")
    assert len(live) == len(stored) == 3
    for a, b in zip(live, stored):
        for key in ("FSPO Loss", "Reward Accuracy", "Reward Margin", "Chosen Rewards", "Rejected Rewards"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-4), key
    assert (tmp_path / "stored" / "logs" / "rank_0.log").read_text().count("Loading 'fspo_tiny_llama' model") == 1


@pytest.mark.slow
def test_run_dir_scores_with_the_runs_last_checkpoint(scored, tmp_path) -> None:
    root, full = scored
    # A run whose checkpoints keep the tiny model's weights (learning rate 0), so its scores must be the tiny model's.
    sft = tmp_path / "sft"
    run(sft, "fspo_sft", f"common.assets.extra_path={root / 'assets'}", "model.name=fspo_tiny_llama", *CPU_TINY,
        "optimizer.config.lr=0.0", "regime.num_steps=2", "regime.checkpoint_every_n_steps=1",
        "regime.keep_last_n_checkpoints=2")
    out = tmp_path / "scored.jsonl"
    assert score_main(["--run-dir", str(sft), "--input", str(SAMPLE), "--output", str(out), "--batch-size", "5",
                       "--no-progress"]) == 0
    got = [json.loads(line) for line in out.read_text().splitlines()]
    expected = [json.loads(line) for line in full.read_text().splitlines()]
    for a, b in zip(got, expected):
        assert a["reference_score_chosen"] == pytest.approx(b["reference_score_chosen"], abs=1e-4)
        assert a["reference_score_rejected"] == pytest.approx(b["reference_score_rejected"], abs=1e-4)
    assert score_main(["--run-dir", str(tmp_path / "nothing"), "--input", str(SAMPLE), "--output", str(out)]) == 1
