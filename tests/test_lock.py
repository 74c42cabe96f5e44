"""One writer per output: a second command into a locked output is refused at once, naming the holder; a lock left
by a killed process is taken over with a message; training takes the lock before fairseq2 writes anything."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from conftest import REPO, cli_env
from fspo_recipe.lock import LOCK_NAME, OutputInUseError, OutputLock
from test_cli import CPU_TINY, FAIRSEQ2, tiny_assets  # noqa: F401  (tiny_assets is a fixture)
from test_reference import hold_lock


def test_a_held_lock_refuses_and_a_dead_holders_lock_is_taken_over(tmp_path) -> None:
    out = tmp_path / "out"
    holder = hold_lock(out, directory=True)
    try:
        with pytest.raises(OutputInUseError, match=f"in use by process {holder.pid} on {socket.gethostname()}"):
            OutputLock(out, "second").acquire()
    finally:
        holder.kill()
        holder.wait()
    said: list[str] = []
    lock = OutputLock(out, "third").acquire(say=said.append)
    assert len(said) == 1 and f"took over the lock left by process {holder.pid}" in said[0] and "gone" in said[0]
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (out / LOCK_NAME).exists()  # released cleanly: nothing left to take over
    OutputLock(out, "fourth").acquire(say=said.append).release()
    assert len(said) == 1


def test_a_lock_file_naming_a_live_process_is_not_taken_over(tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK_NAME).write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname()}))
        with pytest.raises(OutputInUseError, match="still running"):
            OutputLock(out, "second").acquire()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_directory_the_lock_made_is_removed_when_nothing_was_written(tmp_path) -> None:
    with OutputLock(tmp_path / "new", "a command that fails"):
        pass
    assert not (tmp_path / "new").exists()
    with OutputLock(tmp_path / "kept", "a command that writes"):
        (tmp_path / "kept" / "result.json").write_text("{}")
    assert (tmp_path / "kept" / "result.json").is_file()


@pytest.mark.slow
def test_a_second_training_run_into_the_same_directory_is_refused(tiny_assets, tmp_path) -> None:
    out = tmp_path / "run"
    cmd = [FAIRSEQ2, "lm", "preference_finetune", str(out), "--preset", "fspo_sft", "--no-sweep-dir", "--config",
           f"common.assets.extra_path={tiny_assets}", "model.name=fspo_tiny_llama", *CPU_TINY, "regime.num_steps=100000",
           "regime.num_data_epochs=null", "regime.checkpoint_every_n_steps=100000"]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=cli_env(), cwd=REPO)
    try:
        train = out / "metrics" / "train.jsonl"
        deadline = time.monotonic() + 120
        while not train.is_file():
            assert first.poll() is None and time.monotonic() < deadline, "the first run did not start training"
            time.sleep(0.1)
        config = (out / "config.yaml").read_bytes()
        second = subprocess.run([*cmd, "optimizer.config.lr=0.5"], capture_output=True, text=True,
                                env=cli_env(COLUMNS="400"), cwd=REPO, timeout=120)
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"in use by process {first.pid} on {socket.gethostname()}" in second.stderr
        assert "Traceback" not in second.stderr
        assert (out / "config.yaml").read_bytes() == config  # the first run's configuration is still there
        assert first.poll() is None
    finally:
        first.kill()
        first.wait()


def test_judge_and_gpo_refuse_a_locked_output(tmp_path, capsys) -> None:
    from fspo_recipe.gpo.cli import main as gpo_main
    from fspo_recipe.judge.cli import main as judge_main

    out = tmp_path / "out"
    holder = hold_lock(out, directory=True)
    try:
        generations = tmp_path / "g.jsonl"
        generations.write_text(json.dumps({"id": "1", "user": "u", "question": "q", "response": "r"}) + "\n")
        assert judge_main([str(out), "--generations", f"a={generations}", f"b={generations}", "--baseline", "b",
                           "--judge", "exact", "--no-progress"]) == 1
        assert f"in use by process {holder.pid}" in capsys.readouterr().err
        assert gpo_main(["train", str(out), "--embeddings", str(tmp_path), "--data", str(generations)]) == 2
        assert f"in use by process {holder.pid}" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    assert [p.name for p in out.iterdir()] == [LOCK_NAME]  # the killed holder's lock file only: nothing written


def test_sigterm_while_an_atomic_directory_is_written_removes_it_and_a_killed_writers_debris_goes(tmp_path) -> None:
    """fspo-export-hf and fspo-gguf-card (fspo-fetch-smollm2) write through atomic_directory: a SIGTERM unwinds (the
    partial directory removed, the old output intact, Terminated raised for the command's one-line exit 143), and
    the next writer of the same output removes what a SIGKILLed one left (a partial directory of a dead process)."""
    import os
    import signal

    from fspo_recipe.files import Terminated, atomic_directory

    out = tmp_path / "export"
    out.mkdir()
    (out / "config.json").write_text("old")
    with pytest.raises(Terminated):
        with atomic_directory(out) as tmp:
            (tmp / "model.safetensors").write_bytes(b"x" * 1000)
            os.kill(os.getpid(), signal.SIGTERM)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"] and (out / "config.json").read_text() == "old"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored

    dead = tmp_path / ".export.partial-999999999-abc"  # what a SIGKILL during an export leaves
    dead.mkdir()
    (dead / "model.safetensors").write_bytes(b"x" * 1000)
    with atomic_directory(out) as tmp:
        (tmp / "config.json").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"] and (out / "config.json").read_text() == "new"
