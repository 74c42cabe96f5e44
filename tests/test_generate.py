"""fspo-generate (fspo_recipe/eval/generate_cli.py): greedy answers of the same tiny model to the same prompts are
equal token for token from fairseq2's sampler (preference_eval), from transformers on the export, and from an
OpenAI-compatible server (a loopback server replaying transformers); a killed run resumes without sending answered
prompts again; fspo-judge reads the output."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO
from hf_fixtures import write_hf_model
from loopback import LoopbackServer
from test_models import fairseq2

SAMPLE = REPO / "datasets" / "samples" / "fspo_sample" / "train.jsonl"
NEW_TOKENS = 12
EXAMPLES = 6


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny random tied llama with a chat template: its card directory and its fspo-export-hf export."""
    from fspo_recipe.models.hf import main as hf_card_main
    from fspo_recipe.models.hf_export import main as export_main

    root = tmp_path_factory.mktemp("generate")
    hf = write_hf_model(root / "hf", "llama", seed=7, tied=True)
    assert hf_card_main([str(hf), "--name", "gen_llama", "--out", str(root / "cards")]) == 0
    assert export_main(["--card", "gen_llama", "--assets-dir", str(root / "cards"), str(root / "export")]) == 0
    return root / "cards", root / "export"


class ReplayServer(LoopbackServer):
    """A chat-completions server on 127.0.0.1 that answers as transformers' greedy ``generate`` on the export (the
    model's chat template, its generation_config's end ids); counts the requests it answered."""

    def __init__(self, model_dir: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        super().__init__()
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.requests: list[dict] = []
        self._lock = threading.Lock()

    def respond(self, body: dict, auth: str) -> tuple[int, dict[str, str], dict, float]:
        ids = self.tokenizer.apply_chat_template(body["messages"], add_generation_prompt=True, return_tensors="pt",
                                                 return_dict=True)["input_ids"]
        with self._lock, torch.no_grad():
            self.requests.append(body)
            stop = self.model.generation_config.eos_token_id
            out = self.model.generate(ids, max_new_tokens=body["max_tokens"], do_sample=False, eos_token_id=stop,
                                      pad_token_id=self.tokenizer.pad_token_id or 0)[0, ids.shape[1]:].tolist()
        stops = stop if isinstance(stop, list) else [stop]
        new = out[: next((i for i, t in enumerate(out) if t in stops), len(out))]
        return 200, {}, {"id": "x", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": self.tokenizer.decode(
                                          new, skip_special_tokens=True)}}],
                         "usage": {"prompt_tokens": ids.shape[1], "completion_tokens": len(new),
                                   "total_tokens": ids.shape[1] + len(new)}}, 0.0


def answers(path: Path) -> dict[str, str]:
    return {r["id"]: r["generated"] for r in map(json.loads, path.read_text().splitlines())}


@pytest.mark.slow
def test_greedy_answers_are_equal_across_fairseq2_transformers_and_a_server(exported, tmp_path) -> None:
    from fspo_recipe.eval.generate_cli import main

    cards, export = exported
    proc = fairseq2("lm", "preference_eval", str(tmp_path / "fs2"), "--no-sweep-dir", "--config",
                    f"common.assets.extra_path={cards}", "model.name=gen_llama", f"dataset={SAMPLE}", "shots=[]",
                    "chat_template=true", "bootstrap_samples=0", "criterion.loss=simpo", "generation.enabled=true",
                    "generation.greedy=true", f"generation.max_new_tokens={NEW_TOKENS}",
                    f"generation.max_examples={EXAMPLES}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    want = answers(tmp_path / "fs2" / "generations.jsonl")
    assert len(want) == EXAMPLES and any(want.values())

    common = ["--data", str(SAMPLE), "--max-new-tokens", str(NEW_TOKENS), "--max-examples", str(EXAMPLES),
              "--chat-template", "--no-progress"]
    assert main([str(tmp_path / "hf"), "--model", str(export), "--batch-size", "4", *common]) == 0
    assert answers(tmp_path / "hf" / "generations.jsonl") == want

    with ReplayServer(export) as server:
        out = tmp_path / "server"
        args = [str(out), "--backend", "openai", "--base-url", server.url, "--model", "gen", *common]
        assert main(args) == 0
        assert answers(out / "generations.jsonl") == want and len(server.requests) == EXAMPLES
        # Killed after four answers (the last one cut mid-line): the same command sends the other two only.
        lines = (out / "generations.jsonl").read_text().splitlines(keepends=True)
        (out / "generations.jsonl").write_text("".join(lines[:4]) + lines[4][:20])
        assert main(args) == 0
        assert len(server.requests) == EXAMPLES + 2
        assert answers(out / "generations.jsonl") == want
        # Other settings into the same output are refused.
        assert main([*args, "--max-new-tokens", "5"]) == 2

    # Without the chat template (preference_eval's default): the plain prompt, equal again.
    proc = fairseq2("lm", "preference_eval", str(tmp_path / "fs2_plain"), "--no-sweep-dir", "--config",
                    f"common.assets.extra_path={cards}", "model.name=gen_llama", f"dataset={SAMPLE}", "shots=[]",
                    "bootstrap_samples=0", "criterion.loss=simpo", "generation.enabled=true", "generation.greedy=true",
                    f"generation.max_new_tokens={NEW_TOKENS}", f"generation.max_examples={EXAMPLES}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    plain = [a for a in common if a != "--chat-template"]
    assert main([str(tmp_path / "hf_plain"), "--model", str(export), *plain]) == 0
    assert answers(tmp_path / "hf_plain" / "generations.jsonl") == answers(tmp_path / "fs2_plain" / "generations.jsonl")

    meta = json.loads((out / "generation.json").read_text())
    assert meta["settings"]["sampling"]["greedy"] is True and meta["answered_before"] == 4
    records = [json.loads(line) for line in (tmp_path / "hf" / "generations.jsonl").read_text().splitlines()]
    fs2 = {r["id"]: r for r in map(json.loads, (tmp_path / "fs2" / "generations.jsonl").read_text().splitlines())}
    for r in records:  # the fields fspo-judge reads, as preference_eval writes them
        for key in ("user", "user_description", "question", "shots", "response", "prompt", "reference_chosen"):
            assert r[key] == fs2[r["id"]][key], key

    # fspo-judge reads both files (a chat judge on a loopback server; the sample's users are not synthetic ones).
    from fspo_recipe.judge.cli import main as judge_main
    from test_judge import ScriptedServer

    with ScriptedServer() as judge:
        assert judge_main([str(tmp_path / "judge"), "--generations", f"hf={tmp_path / 'hf' / 'generations.jsonl'}",
                           f"fs2={tmp_path / 'fs2' / 'generations.jsonl'}", "--baseline", "fs2", "--base-url",
                           judge.url, "--model", "judge", "--no-progress"]) == 0
    assert json.loads((tmp_path / "judge" / "win_rates.json").read_text())["systems"]["hf"]["overall"]["judged"] \
        == EXAMPLES


def test_bad_input_is_one_line(tmp_path, capsys) -> None:
    from fspo_recipe.eval.generate_cli import main

    weights_only = tmp_path / "weights_only"
    weights_only.mkdir()
    (weights_only / "config.json").write_text("{}")
    cases = [
        (["--model", str(tmp_path / "nothing")], "no config.json"),
        (["--model", str(weights_only)], "no tokenizer.json"),
        (["--model", str(weights_only), "--data", str(tmp_path / "missing.jsonl")], "neither a file nor a known"),
        # OpenAI's own API (no --base-url) with its key in another variable: the variable is named when unset.
        (["--backend", "openai", "--model", "gpt-4o-mini", "--api-key-env", "FSPO_TEST_UNSET_KEY"],
         "environment variable FSPO_TEST_UNSET_KEY, which is not set"),
    ]
    for extra, expected in cases:
        data = [] if "--data" in extra else ["--data", str(SAMPLE)]
        assert main([str(tmp_path / "out"), *data, *extra, "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert expected in err and len(err.splitlines()) == 1, err


class EmptyReplies(LoopbackServer):
    """Answers 200 without an answer, by the order prompts first arrive: no choices for the first, a choice whose
    content is null for the second, a number for the third (its retry gets a real answer); the others answer."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[str, int] = {}

    def respond(self, body: dict, auth: str) -> tuple[int, dict[str, str], dict, float]:
        prompt = body["messages"][0]["content"]
        kind = list(self.seen).index(prompt) if prompt in self.seen else len(self.seen)
        self.seen[prompt] = self.seen.get(prompt, 0) + 1
        message: dict = {"role": "assistant", "content": "An answer."}
        choices = [{"index": 0, "finish_reason": "stop", "message": message}]
        if kind == 0:
            choices = []
        elif kind == 1:
            message["content"] = None
        elif kind == 2 and self.seen[prompt] == 1:
            message["content"] = 7
        return 200, {}, {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                         "choices": choices}, 0.0


def test_a_reply_without_an_answer_is_a_failed_request_not_an_empty_answer(tmp_path, capsys) -> None:
    from fspo_recipe.eval.generate_cli import main

    with EmptyReplies() as server:
        out = tmp_path / "out"
        code = main([str(out), "--data", str(SAMPLE), "--max-examples", "4", "--chat-template", "--backend", "openai",
                     "--base-url", server.url, "--model", "m", "--max-retries", "1", "--backoff", "0",
                     "--concurrency", "1", "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "2 prompt(s) got no answer" in err and "not a completion" in err, err
    records = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(r["generated"] == "An answer." for r in records)  # no "" saved as an answer
    assert sorted(server.seen.values()) == [1, 2, 2, 2]  # each reply without an answer was asked again


def test_a_resume_after_the_model_changed_at_the_same_path_is_refused(exported, tmp_path, capsys) -> None:
    """Answers of two models are never mixed: the model directory's files are part of what a resume must match."""
    import os
    import shutil

    from fspo_recipe.eval.generate_cli import main

    _, export = exported
    model = tmp_path / "model"
    shutil.copytree(export, model)
    args = [str(tmp_path / "out"), "--model", str(model), "--data", str(SAMPLE), "--max-examples", "2",
            "--max-new-tokens", "3", "--chat-template", "--no-progress"]
    assert main(args) == 0
    assert main(args) == 0  # the same model: a resume (nothing left to answer)
    weights = model / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))  # written again
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "another model at the same path" in err and len(err.splitlines()) == 1, err
    assert len((tmp_path / "out" / "generations.jsonl").read_text().splitlines()) == 2


def test_prompts_longer_than_the_context_are_refused_before_any_work(exported, tmp_path, capsys) -> None:
    import shutil

    from fspo_recipe.eval.generate_cli import main

    _, export = exported
    model = tmp_path / "model"
    shutil.copytree(export, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 64}))
    out = tmp_path / "out"
    assert main([str(out), "--model", str(model), "--data", str(SAMPLE), "--max-examples", "3", "--chat-template",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # (transformers prints its loading bar before)
    assert err.startswith("fspo-generate: ") and "exceed the model's context of 64 tokens" in err
    assert "prompt tokens" in err and "Traceback" not in err
    assert not (out / "generations.jsonl").exists() or not (out / "generations.jsonl").read_text()
