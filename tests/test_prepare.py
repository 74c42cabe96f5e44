"""fspo-prepare as a new user meets it: bad input and options, outputs it must not touch, signals, messages that say
where."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, cli_env
from fspo_recipe.data.build import EpisodeOptions
from fspo_recipe.data.prepare import main as prepare_main, prepare

SAMPLES = REPO / "datasets" / "samples"


def prepare_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "fspo_recipe.data.prepare", *args]


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---- outputs it must not touch ------------------------------------------------------------------------------------------


def test_the_input_is_never_the_output(tmp_path, capsys) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "elix").mkdir()
    for f in (SAMPLES / "elix").glob("*.jsonl"):
        (raw / "elix" / f.name).write_bytes(f.read_bytes())
    before = {f.name: f.read_bytes() for f in (raw / "elix").iterdir()}
    assert prepare_main(["elix", "--input", str(raw / "elix"), "--out", str(raw), "--no-progress"]) == 1
    assert "is or contains the input" in capsys.readouterr().err
    assert {f.name: f.read_bytes() for f in (raw / "elix").iterdir()} == before
    # The same when the input is a file inside the output directory, and even with --overwrite.
    assert prepare_main(["elix", "--input", str(raw / "elix" / "train.jsonl"), "--out", str(raw), "--overwrite",
                         "--no-progress"]) == 1
    assert {f.name: f.read_bytes() for f in (raw / "elix").iterdir()} == before


def test_an_existing_directory_is_replaced_only_with_overwrite_and_only_if_prepared(tmp_path, capsys) -> None:
    args = ["elix", "--input", str(SAMPLES / "elix"), "--out", str(tmp_path), "--shots", "2", "--no-progress"]
    assert prepare_main(args) == 0
    first = (tmp_path / "elix" / "train.jsonl").read_bytes()
    assert json.loads((tmp_path / "elix" / "summary.json").read_text())["written_by"] == "fspo-prepare"

    assert prepare_main(args[:-3] + ["--shots", "3", "--no-progress"]) == 1  # no --overwrite
    assert "pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "elix" / "train.jsonl").read_bytes() == first

    assert prepare_main(args[:-3] + ["--shots", "3", "--no-progress", "--overwrite"]) == 0
    assert (tmp_path / "elix" / "train.jsonl").read_bytes() != first

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my only copy")
    assert prepare_main(["elix", "--input", str(SAMPLES / "elix"), "--out", str(tmp_path), "--name", "mine",
                         "--overwrite", "--no-progress"]) == 1
    assert "was not written by fspo-prepare" in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "my only copy"


# ---- splits and numeric options ---------------------------------------------------------------------


def test_a_test_fraction_holds_out_at_least_one_user(tmp_path, capsys) -> None:
    summary = prepare("elix", [str(SAMPLES / "elix")], tmp_path, options=EpisodeOptions(num_shots=2),
                      split_mode="heldout_users", test_users=0.1)  # 0.1 of 5 users rounds to 0
    assert summary["splits"]["test"]["users"] == 1 and summary["splits"]["train"]["users"] == 4
    assert (tmp_path / "elix" / "elix_test.yaml").is_file()
    assert "test " in capsys.readouterr().err  # per-split user counts are said as the command runs


@pytest.mark.parametrize("option,value,message", [
    ("--test-users", "-1", "--test-users: expected a number of users"),
    ("--test-users", "1.5", "--test-users: expected a number of users"),
    ("--test-users", "inf", "--test-users: expected a number of users"),
    ("--valid-fraction", "nan", "--valid-fraction: must be in [0, 1)"),
    ("--valid-fraction", "1.5", "--valid-fraction: must be in [0, 1)"),
    ("--passes", "0", "--passes: must be >= 1"),
    ("--shots", "-2", "--shots: must be >= 0"),
])
def test_nonsense_numbers_are_refused_with_one_line(tmp_path, capsys, option, value, message) -> None:
    with pytest.raises(SystemExit) as exit_info:
        prepare_main(["elix", "--input", str(SAMPLES / "elix"), "--out", str(tmp_path), option, value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "elix").exists()


def test_a_valid_fraction_that_takes_no_row_is_refused(tmp_path, capsys) -> None:
    assert prepare_main(["elix", "--input", str(SAMPLES / "elix"), "--out", str(tmp_path), "--valid-fraction", "0.01",
                         "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "--valid-fraction 0.01 takes no row" in err and "(the most: 32)" in err
    assert not (tmp_path / "elix").exists()


def test_the_python_api_refuses_them_too(tmp_path) -> None:
    with pytest.raises(ValueError, match="--test-users must be a number of users"):
        prepare("elix", [str(SAMPLES / "elix")], tmp_path, options=EpisodeOptions(num_shots=2),
                split_mode="heldout_users", test_users=-1)
    with pytest.raises(ValueError, match="--passes must be >= 1"):
        prepare("elix", [str(SAMPLES / "elix")], tmp_path, options=EpisodeOptions(num_shots=2, num_passes=0))
    assert not (tmp_path / "elix").exists()


@pytest.mark.parametrize("source", ["elix", "roleplay"])
def test_interpolated_needs_attribute_users(tmp_path, capsys, source) -> None:
    assert prepare_main([source, "--input", str(SAMPLES / source), "--out", str(tmp_path),
                         "--split-mode", "interpolated", "--no-progress"]) == 1
    assert "needs users made of attributes" in capsys.readouterr().err
    assert not (tmp_path / source).exists()


def test_the_pipeline_checks_its_splits_before_training(tmp_path) -> None:
    script = REPO / "example_training_scripts" / "fspo_pipeline.sh"
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    # Two users, one of which has too few rows for an episode: one of the two splits cannot be made, so training
    # must not start.
    rows = [r for r in read_rows(SAMPLES / "elix" / "train.jsonl") if r["scorer_level"] in ("a child", "an expert")]
    rows = [r for r in rows if r["scorer_level"] == "a child"] + [r for r in rows if r["scorer_level"] == "an expert"][:2]
    write_rows(tmp_path / "in" / "train.jsonl", rows)
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, cwd=REPO, timeout=120,
                          env=cli_env(PATH=path, RUN_ROOT=str(tmp_path / "run"), INPUT=str(tmp_path / "in"), SHOTS="2",
                                      TEST_USERS="1", MODEL="fspo_tiny_llama"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "no data set card 'elix_t" in proc.stderr
    assert not (tmp_path / "run" / "sft").exists()


# ---- signals -------------------------------------------------------------------------------


def big_elix(path: Path, rows: int = 30000) -> Path:
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from prepare_elix import synthetic_rows
    finally:
        sys.path.pop(0)
    cols = synthetic_rows(rows, 300, 0)
    write_rows(path, [dict(zip(cols, values)) for values in zip(*cols.values())])
    return path


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_leaves_nothing_behind(tmp_path, sig) -> None:
    src = big_elix(tmp_path / "in" / "train.jsonl")
    out = tmp_path / "out"
    proc = subprocess.Popen(prepare_cli("elix", "--input", str(src), "--out", str(out), "--no-progress"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    deadline = time.monotonic() + 120
    while not any((p / "train.jsonl").exists() for p in out.glob(".elix.partial-*")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, stderr
    assert stderr.strip().splitlines()[-1].startswith("fspo-prepare: interrupted") and "nothing written" in stderr
    assert "Traceback" not in stderr
    assert not out.exists()  # made for this run, removed with its lock: nothing behind


def test_debris_of_killed_runs_is_removed(tmp_path) -> None:
    out = tmp_path / "out"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / f".elix.partial-{dead.pid}-abc").mkdir(parents=True)
    (out / f".elix.partial-{dead.pid}-abc" / "train.jsonl").write_text("half")
    live = out / f".elix.partial-{os.getpid()}-xyz"  # a process that still runs: its work is left alone
    live.mkdir()
    prepare("elix", [str(SAMPLES / "elix")], out, options=EpisodeOptions(num_shots=2))
    assert sorted(p.name for p in out.iterdir()) == sorted(["elix", live.name])
    (out / f".elix.old-{dead.pid}").mkdir()  # a replaced data set a killed run had not removed yet: removed
    prepare("elix", [str(SAMPLES / "elix")], out, options=EpisodeOptions(num_shots=3), overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == sorted(["elix", live.name])


def dataset_files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


@pytest.mark.parametrize("at", ["writing", "before rename 1", "after rename 1", "after rename 2"])
def test_a_signal_at_each_rename_leaves_the_old_or_the_new_data_set_and_says_which(tmp_path, monkeypatch, capsys, at
                                                                                   ) -> None:
    args = ["elix", "--input", str(SAMPLES / "elix"), "--out", str(tmp_path), "--no-progress", "--overwrite"]
    assert prepare_main([*args, "--shots", "2"]) == 0
    old = dataset_files(tmp_path / "elix")
    real_replace, renames = os.replace, []

    def replace(src, dst):  # SIGTERM to this process at the chosen point of the two renames of the replacement
        renames.append(1)
        if at == f"before rename {len(renames)}":
            os.kill(os.getpid(), signal.SIGTERM)
        real_replace(src, dst)
        if at == f"after rename {len(renames)}":
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(os, "replace", replace)
    if at == "writing":
        monkeypatch.setattr("fspo_recipe.data.prepare.jsonl_line", lambda record: os.kill(os.getpid(), signal.SIGTERM))
    capsys.readouterr()
    assert prepare_main([*args, "--shots", "3"]) == 128 + signal.SIGTERM
    monkeypatch.undo()
    err = capsys.readouterr().err.strip().splitlines()[-1]
    now = dataset_files(tmp_path / "elix")
    if at == "writing":
        assert now == old and "nothing written" in err and "holds the data set it held before" in err
    else:  # the renames run with signals held: the signal arrives once the new data set is in place
        assert json.loads(now["summary.json"])["num_shots"] == 3
        assert "the new data set was already in place" in err and "is complete" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elix"]  # no backup, no partial, no lock left


def test_a_replacement_killed_between_its_renames_is_put_back(tmp_path) -> None:
    args = ["elix", "--input", str(SAMPLES / "elix"), "--out", str(tmp_path), "--no-progress"]
    assert prepare_main([*args, "--shots", "2"]) == 0
    old = dataset_files(tmp_path / "elix")
    # SIGKILL (which no program can hold) right after the old data set was moved aside:
    code = ("import os, signal, sys; real = os.replace\n"
            "def replace(src, dst):\n    real(src, dst)\n    os.kill(os.getpid(), signal.SIGKILL)\n"
            "os.replace = replace\nfrom fspo_recipe.data.prepare import main\nmain(sys.argv[1:])")
    proc = subprocess.run([sys.executable, "-c", code, *args, "--shots", "3", "--overwrite"], cwd=REPO, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "elix").exists() and any(p.name.startswith(".elix.old-") for p in tmp_path.iterdir())
    # The next run puts it back first, then refuses to replace it without --overwrite.
    proc = subprocess.run(prepare_cli(*args, "--shots", "4"), capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 1 and "put " in proc.stderr and "pass --overwrite" in proc.stderr
    assert dataset_files(tmp_path / "elix") == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elix"]


def test_the_output_is_never_inside_the_input(tmp_path, capsys) -> None:
    raw = tmp_path / "raw"
    (raw / "elix").mkdir(parents=True)
    for f in (SAMPLES / "elix").glob("*.jsonl"):
        (raw / "elix" / f.name).write_bytes(f.read_bytes())
    assert prepare_main(["elix", "--input", str(raw / "elix"), "--out", str(raw / "elix"), "--no-progress"]) == 1
    assert "is inside the input directory" in capsys.readouterr().err
    assert sorted(p.name for p in (raw / "elix").iterdir()) == ["test.jsonl", "train.jsonl"]


# ---- messages that say where ------------------------------------------------------------------------


def test_prepare_given_a_file_as_output(tmp_path, capsys) -> None:
    (tmp_path / "f").write_text("x")
    assert prepare_main(["elix", "--input", str(SAMPLES / "elix"), "--out", str(tmp_path / "f"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "is a file, not a directory" in err and "Errno" not in err


@pytest.mark.parametrize("content,expected", [
    (b"", "the file is empty"),
    (b"\n\n", "the file has no records"),
    (b'{"prompt": "caf\xe9"}\n', "line 1, byte 16: not UTF-8 text"),
    (b'{"prompt": "a"}\n{"prompt": "unterminated\n', "line 2, column 12: not valid JSON (Unterminated string"),
])
def test_input_errors_name_file_line_and_column(tmp_path, capsys, content, expected) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(content)
    assert prepare_main(["elix", "--input", str(path), "--out", str(tmp_path / "out"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"{path}" in err and expected in err, err


# ---- permissions -----------------------------------------------------------------------------------------


def test_outputs_honour_the_umask(tmp_path) -> None:
    old = os.umask(0o022)
    try:
        prepare("elix", [str(SAMPLES / "elix")], tmp_path, options=EpisodeOptions(num_shots=2), log=False)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "elix").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "elix" / "train.jsonl").stat().st_mode) == 0o644

    from fspo_recipe.files import atomic_file

    old = os.umask(0o002)
    try:
        with atomic_file(tmp_path / "metrics.json") as fp:
            fp.write("{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "metrics.json").stat().st_mode) == 0o664


# ---- silent oddities ---------------------------------------------------------------------------------------


def test_identical_pairs_are_skipped_and_echoes_flagged(tmp_path) -> None:
    rows = read_rows(SAMPLES / "elix" / "train.jsonl")
    rows[0]["response_y"] = rows[0]["response_x"]
    rows[1]["response_x"] = rows[1]["prompt"]
    src = write_rows(tmp_path / "in" / "train.jsonl", rows)
    summary = prepare("elix", [str(src)], tmp_path / "a", options=EpisodeOptions(num_shots=2), log=False)
    assert summary["rows_skipped"] == {"preferred equal to dispreferred (--keep-identical-pairs keeps them)": 1}
    assert summary["rows_flagged"] == {"a response equal to its question": 1}
    kept = prepare("elix", [str(src)], tmp_path / "b", options=EpisodeOptions(num_shots=2), keep_identical=True,
                   log=False)
    assert kept["rows_skipped"] == {} and kept["keep_identical_pairs"] is True


def test_stages_are_logged_when_not_on_a_terminal(tmp_path) -> None:
    proc = subprocess.run(prepare_cli("elix", "--input", str(SAMPLES / "elix"), "--out", str(tmp_path)),
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("fspo-prepare: ")]
    assert any(line.startswith("fspo-prepare: read 200 rows") for line in lines)
    assert any("train:" in line and "episodes of 5 users" in line for line in lines)


def test_episode_building_is_linear_in_users(tmp_path, monkeypatch) -> None:
    """Every user's rationale draws from all other users' descriptions; that list is not copied per user (a copy per
    user made building quadratic in users): each user gets a view of the one shared list."""
    from fspo_recipe.data import build
    from fspo_recipe.data.build import SplitStats, build_split_episodes
    from fspo_recipe.data.sources import PreferenceRow

    rows = [PreferenceRow(f"t/{u}/{i}", f"u{u:06d}", f"q{i}", "p", "d", f"desc {u % 1000}", "")
            for u in range(300) for i in range(2)]
    seen: list[object] = []
    real = build.build_user_episodes

    def spy(user, user_rows, options, others=(), stats=None):
        seen.append(others)
        return real(user, user_rows, options, others, stats)

    monkeypatch.setattr(build, "build_user_episodes", spy)
    episodes = list(build_split_episodes(rows, EpisodeOptions(num_shots=1, num_passes=1, rationale="generated"),
                                         SplitStats()))
    assert len(episodes) == 300 and len(seen) == 300
    assert all(isinstance(o, build._Excluding) and o._items is seen[0]._items for o in seen)  # one list, no copy

    # The draws are those of the full list: the same rationale as a plain list gives.
    descriptions = [f"d{i % 7}" for i in range(50)]
    positions = [i for i, d in enumerate(descriptions) if d == "d3"]
    view = build._Excluding(descriptions, positions)
    assert list(view) == [d for d in descriptions if d != "d3"]
