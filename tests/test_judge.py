"""fspo-judge against a real chat-completions server on the loopback interface (scripted answers), and the exact
judge on hand-made answers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from loopback import LoopbackServer
from fspo_recipe.judge.chat import request_key
from fspo_recipe.judge.cli import main as judge_main
from fspo_recipe.judge.exact import ExactJudge
from fspo_recipe.judge.verdicts import JudgeQuery, Verdict, parse_choice, system_score

KEY = "sk-test-0123456789-never-written"


def answer_between(prompt: str, label: str) -> str:
    return prompt.split(f"[Answer {label}]\n", 1)[1].split(f"\n[End of answer {label}]", 1)[0]


class ScriptedServer(LoopbackServer):
    """A chat-completions server on 127.0.0.1. It prefers the answer with more "yes" words; when both have as many
    it says A (a position-biased judge). Questions script faults: ``q-429`` (first request: 429 with Retry-After),
    ``q-500`` (first request: 500), ``q-bad`` (always a reply without a verdict), ``q-slow`` (first request answered
    after 12 s, far past the client's 4 s timeout, so that a busy machine cannot blur the two), ``q-html`` (first
    request: 200 with an HTML page), ``q-notjson`` (always 200 with a body that is not JSON), ``q-echo`` (always a 400
    whose body echoes the request's Authorization header), ``q-neither`` (always "neither is preferred" prose);
    ``down=True``: every request is a 503. Every request's body and Authorization header are recorded."""

    def __init__(self, delay: float = 0.0, down: bool = False) -> None:
        super().__init__()
        self.down = down
        self.requests: list[dict] = []
        self.auth: list[str] = []
        self.delay = delay
        self._seen: dict[str, int] = {}
        self._lock = threading.Lock()

    def respond(self, body: dict, auth: str) -> tuple[int, dict, dict, float]:
        prompt = body["messages"][0]["content"]
        with self._lock:
            self.requests.append(body)
            self.auth.append(auth)
            n = self._seen[prompt] = self._seen.get(prompt, 0) + 1
        if self.down:
            return 503, {}, {"error": {"message": "down for maintenance", "type": "server_error"}}, 0.0
        if "q-html" in prompt and n == 1:
            return 200, {"Content-Type": "text/html"}, b"<html><body>Gateway says hello</body></html>", 0.0
        if "q-notjson" in prompt:
            return 200, {}, b"this is not json", 0.0
        if "q-echo" in prompt:
            return 400, {}, {"error": {"message": f"bad request; headers were Authorization: {auth}",
                                       "type": "invalid_request_error"}}, 0.0
        if "q-neither" in prompt:
            return 200, {}, {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                             "choices": [{"index": 0, "finish_reason": "stop", "message": {
                                 "role": "assistant",
                                 "content": "Neither answer is preferred. A and B are equally poor."}}]}, 0.0
        if "q-429" in prompt and n == 1:
            return 429, {"Retry-After": "1"}, {"error": {"message": "slow down", "type": "rate_limit"}}, 0.0
        if "q-500" in prompt and n == 1:
            return 500, {}, {"error": {"message": "boom", "type": "server_error"}}, 0.0
        wait = 12.0 if "q-slow" in prompt and n == 1 else self.delay
        a, b = (answer_between(prompt, x).split().count("yes") for x in "AB")
        reply = "I cannot tell." if "q-bad" in prompt else f"Some reasoning.\nPreferred: {'B' if b > a else 'A'}"
        return 200, {}, {
            "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": reply}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13},
        }, wait


def write_generations(path: Path, system: str, answers: dict[str, tuple[str, str, str]]) -> None:
    """answers: id -> (user, question, response)."""
    path.write_text("".join(json.dumps({"id": i, "user": u, "user_description": f"I am {u}.", "question": q,
                                        "response": r, "system": system}) + "\n"
                            for i, (u, q, r) in answers.items()))


# id: (user, question, fspo answer, sft answer); the expected fspo score against sft with the scripted judge.
CASES = {
    "1": ("u1", "q1", "yes yes", "no", 1.0),      # more yes: wins in both orders
    "2": ("u1", "q2", "no", "yes", 0.0),          # loses in both orders
    "3": ("u1", "q3", "yes", "yes", 0.5),         # as many: the judge says A in both orders -> they disagree: tie
    "4": ("u1", "q-429", "yes", "no", 1.0),       # a 429 with Retry-After first, then judged
    "5": ("u2", "q-500", "no", "yes yes", 0.0),   # a 500 first, then judged
    "6": ("u2", "q-slow", "yes", "no", 1.0),      # the first answer comes after the timeout
    "7": ("u2", "q-bad", "yes", "no", None),      # never a verdict: a failure, not a guess
}


@pytest.fixture()
def generations(tmp_path: Path) -> tuple[Path, Path]:
    fspo, sft = tmp_path / "fspo.jsonl", tmp_path / "sft.jsonl"
    write_generations(fspo, "fspo", {i: (c[0], c[1], c[2]) for i, c in CASES.items()})
    write_generations(sft, "sft", {i: (c[0], c[1], c[3]) for i, c in CASES.items()})
    return fspo, sft


def judge_args(out: Path, url: str, fspo: Path, sft: Path, *extra: str) -> list[str]:
    return [str(out), "--generations", str(fspo), str(sft), "--baseline", "sft", "--base-url", url,
            "--model", "judge-model", "--api-key-env", "FSPO_TEST_JUDGE_KEY", "--timeout", "4", "--backoff", "0.05",
            "--parse-retries", "1", "--no-progress", *extra]


@pytest.mark.slow
def test_chat_judge_orders_ties_retries_failures_and_win_rates(generations, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("FSPO_TEST_JUDGE_KEY", KEY)
    out = tmp_path / "out"
    with ScriptedServer() as server:
        assert judge_main(judge_args(out, server.url, *generations)) == 0
    printed = capsys.readouterr()

    # Both orders of every pair were sent: once with fspo's answer as A, once as B.
    for i, (user, question, mine, theirs, *_) in CASES.items():
        if mine == theirs:
            continue
        orders = {(answer_between(r["messages"][0]["content"], "A"), answer_between(r["messages"][0]["content"], "B"))
                  for r in server.requests if f"\n{question}\n" in r["messages"][0]["content"]}
        assert orders == {(mine, theirs), (theirs, mine)}, question
        assert f"I am {user}." in next(r["messages"][0]["content"] for r in server.requests
                                       if f"\n{question}\n" in r["messages"][0]["content"])
    # Retried exactly as scripted, each order being its own request: 13 distinct requests (q3's two orders are one
    # request, sent once), and one more per order after the 429, the 500, the timeout and the reply without a verdict.
    prompts = [r["messages"][0]["content"] for r in server.requests]
    assert len(set(prompts)) == 13
    assert len(prompts) == 13 + 2 + 2 + 2 + 2
    assert all(a == f"Bearer {KEY}" for a in server.auth)

    judgments = [json.loads(line) for line in (out / "judgments.jsonl").read_text().splitlines()]
    assert {j["id"]: j["score"] for j in judgments} == {i: c[4] for i, c in CASES.items()}
    bad = next(j for j in judgments if j["id"] == "7")
    assert bad["outcome"] == "failure" and "no clear verdict in 2 replies" in bad["errors"][0]

    rates = json.loads((out / "win_rates.json").read_text())["systems"]["fspo"]
    # Hand-computed: judged scores 1, 0, 0.5, 1 (u1) and 0, 1 (u2); 7 is a failure.
    assert rates["overall"]["win_rate"] == pytest.approx(3.5 / 6)
    assert (rates["overall"]["wins"], rates["overall"]["ties"], rates["overall"]["losses"],
            rates["overall"]["failures"], rates["overall"]["judged"]) == (3, 1, 2, 1, 6)
    assert rates["per_user"]["u1"]["win_rate"] == pytest.approx(2.5 / 4)
    assert rates["per_user"]["u2"]["win_rate"] == pytest.approx(0.5)
    assert rates["per_user"]["u2"]["failures"] == 1
    lo, hi = rates["overall"]["ci95"]
    assert 0.0 <= lo <= 3.5 / 6 <= hi <= 1.0
    csv_lines = (out / "win_rates.csv").read_text().splitlines()
    assert csv_lines[1].startswith("fspo,sft,(all),0.5833,") and len(csv_lines) == 4
    assert (out / "win_rates.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Usage of the 15 replies received (the 429, the 500 and the timed-out request carry none).
    assert "judge cost: 150 prompt + 45 completion tokens in 21 request(s) (8 retried); 0 answered" in printed.out

    # The API key is in no output file and in nothing printed.
    for path in out.iterdir():
        assert KEY not in path.read_bytes().decode("utf-8", "replace"), path
    assert KEY not in printed.out + printed.err

    # A second run sends nothing answered: only the failed pair's two orders are asked again (and say so).
    with ScriptedServer() as again:
        assert judge_main(judge_args(out, again.url, *generations)) == 0
    assert again.requests and all("q-bad" in r["messages"][0]["content"] for r in again.requests)
    assert "asking again 2 request(s) whose cached answer is a failure" in capsys.readouterr().err
    assert json.loads((out / "win_rates.json").read_text())["systems"] == json.loads(
        json.dumps({"fspo": rates}))


@pytest.mark.slow
def test_a_run_killed_midway_resumes_without_sending_answered_requests_again(generations, tmp_path) -> None:
    fspo, sft = tmp_path / "fspo_many.jsonl", tmp_path / "sft_many.jsonl"
    write_generations(fspo, "fspo", {str(i): (f"u{i % 3}", f"question {i}", "yes" if i % 2 else "no maybe") for i in range(15)})
    write_generations(sft, "sft", {str(i): (f"u{i % 3}", f"question {i}", "no") for i in range(15)})
    out = tmp_path / "out"
    cache = out / "judge_cache.jsonl"
    env = {**os.environ, "FSPO_TEST_JUDGE_KEY": KEY}
    with ScriptedServer(delay=0.15) as slow:
        proc = subprocess.Popen([sys.executable, "-m", "fspo_recipe.judge.cli",
                                 *judge_args(out, slow.url, fspo, sft, "--concurrency", "1")],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 60
        while time.time() < deadline and (not cache.is_file() or len(cache.read_text().splitlines()) < 6):
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    answered_first = {json.loads(line)["key"] for line in cache.read_text().splitlines() if line.endswith("}")}
    assert 6 <= len(answered_first) < 30 and not (out / "judgments.jsonl").exists()

    with ScriptedServer() as fast:
        proc2 = subprocess.run([sys.executable, "-m", "fspo_recipe.judge.cli", *judge_args(out, fast.url, fspo, sft)],
                               env=env, capture_output=True, text=True, timeout=120)
    assert proc2.returncode == 0, proc2.stderr
    sent_again = {request_key({k: r[k] for k in ("model", "messages", "temperature", "max_tokens")})
                  for r in fast.requests}
    assert not sent_again & answered_first
    keys = [json.loads(line)["key"] for line in cache.read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 30
    judgments = [json.loads(line) for line in (out / "judgments.jsonl").read_text().splitlines()]
    assert sorted(int(j["id"]) for j in judgments) == list(range(15))
    assert {j["id"]: j["score"] for j in judgments} == {str(i): 1.0 if i % 2 else 0.5 for i in range(15)}
    assert KEY not in proc2.stdout + proc2.stderr


def test_errors_name_the_file_and_line_and_the_key_is_never_an_argument(generations, tmp_path, capsys) -> None:
    fspo, sft = generations
    broken = tmp_path / "broken.jsonl"
    broken.write_text(fspo.read_text().splitlines()[0] + "\n" + '{"id": "9", "user": "u"}\n')
    assert judge_main([str(tmp_path / "o"), "--generations", str(broken), str(sft), "--baseline", "sft",
                       "--judge", "exact"]) == 2
    assert f"{broken}, line 2: field 'question' is missing or not a string." in capsys.readouterr().err
    with pytest.raises(SystemExit):
        judge_main([str(tmp_path / "o"), "--generations", str(fspo), str(sft), "--baseline", "sft", "--api-key", "x"])
    os.environ.pop("FSPO_NO_SUCH_KEY", None)
    assert judge_main([str(tmp_path / "o"), "--generations", str(fspo), str(sft), "--baseline", "sft",
                       "--model", "m", "--api-key-env", "FSPO_NO_SUCH_KEY"]) == 2
    assert "environment variable FSPO_NO_SUCH_KEY, which is not set" in capsys.readouterr().err
    assert judge_main([str(tmp_path / "o"), "--generations", str(fspo), str(sft), "--baseline", "gpt",
                       "--judge", "exact"]) == 2
    assert "--baseline 'gpt' is not one of the systems: fspo, sft." in capsys.readouterr().err


FAULTS = {  # id: (user, question, fspo answer, sft answer, expected score)
    "1": ("u1", "q-html", "yes", "no", 1.0),       # an HTML page once (a proxy), then judged
    "2": ("u1", "q-notjson", "yes", "no", None),   # never JSON: retried, then a failure, never a crash
    "3": ("u2", "q-echo", "yes", "no", None),      # a 400 echoing the key: a failure, with the key redacted
    "4": ("u2", "q-neither", "yes", "no", None),   # "neither is preferred": no clear verdict, a failure
    "5": ("u2", "q5", "yes", "no", 1.0),
}


def test_answers_that_are_not_completions_or_verdicts_are_failures_and_no_key_is_written(tmp_path, monkeypatch,
                                                                                         capsys) -> None:
    monkeypatch.setenv("FSPO_TEST_JUDGE_KEY", KEY)
    fspo, sft, out = tmp_path / "fspo.jsonl", tmp_path / "sft.jsonl", tmp_path / "out"
    write_generations(fspo, "fspo", {i: (c[0], c[1], c[2]) for i, c in FAULTS.items()})
    write_generations(sft, "sft", {i: (c[0], c[1], c[3]) for i, c in FAULTS.items()})
    with ScriptedServer() as server:
        assert judge_main(judge_args(out, server.url, fspo, sft, "--max-retries", "2")) == 0
    judgments = {j["id"]: j for j in map(json.loads, (out / "judgments.jsonl").read_text().splitlines())}
    assert {i: j["score"] for i, j in judgments.items()} == {i: c[4] for i, c in FAULTS.items()}
    assert "not JSON" in judgments["2"]["errors"][0] and "gave up after 3 attempt(s)" in judgments["2"]["errors"][0]
    assert "[REDACTED]" in judgments["3"]["errors"][0]
    assert "no clear verdict" in judgments["4"]["errors"][0]
    for path in out.iterdir():  # the key, echoed by the server, is in no file
        assert KEY not in path.read_bytes().decode("utf-8", "replace"), path
    assert KEY not in "".join(capsys.readouterr())

    # Against a server that is down, the cached failures are asked again and fail again; nothing else is sent.
    # (2's failures were server errors, never cached: asked again as well.)
    with ScriptedServer(down=True) as down:
        assert judge_main(judge_args(out, down.url, fspo, sft, "--max-retries", "0")) == 0
    asked = {r["messages"][0]["content"].split("The person asked:\n\n")[1].split("\n")[0] for r in down.requests}
    assert asked == {"q-notjson", "q-echo", "q-neither"}
    assert "asking again 4 request(s) whose cached answer is a failure" in capsys.readouterr().err
    rates = json.loads((out / "win_rates.json").read_text())["systems"]["fspo"]["overall"]
    assert (rates["judged"], rates["failures"]) == (2, 3)


def test_parse_choice_and_the_two_orders() -> None:
    assert parse_choice("Because...\nPreferred: B") == "B"
    assert parse_choice("**Preferred:** A") == "A"
    assert parse_choice("Preferred: A\nActually, Preferred: (B)") == "B"
    assert parse_choice(" (A). ") == "A"
    assert parse_choice("I preferred a lot of things") is None
    assert parse_choice("Both are fine.") is None
    assert parse_choice("Neither answer is preferred. A and B are equally poor.") is None
    assert parse_choice('End with "Preferred: A" or "Preferred: B".') is None
    assert parse_choice("Preferred: A\nNo wait.\nPreferred: B\nThanks.") is None  # two verdicts
    assert parse_choice("Preferred answer: [B]\nThanks.") == "B"
    v = lambda c: Verdict(c)  # noqa: E731
    assert system_score(v("A"), v("B")) == 1.0       # the system's answer won as A and as B
    assert system_score(v("B"), v("A")) == 0.0
    assert system_score(v("A"), v("A")) == 0.5       # the judge always picks A: position bias cancelled
    assert system_score(v("tie"), v("tie")) == 0.5
    assert system_score(v("A"), v(None)) is None     # a failed order makes the pair a failure


def test_the_exact_judge_decides_from_the_text_alone() -> None:
    judge = ExactJudge()
    upper = "The user is Ada who likes answers in upper case."
    assert judge.choose(JudgeQuery(upper, "q", "RAIN IS GREAT.", "rain is great.")) == "A"
    assert judge.choose(JudgeQuery(upper, "q", "rain is great.", "RAIN IS GREAT!")) == "B"
    assert judge.choose(JudgeQuery(upper, "q", "RAIN IS GREAT.", "SNOW IS BAD! THINK OF IT!")) == "tie"
    assert judge.choose(JudgeQuery(upper, "q", "", "...")) == "tie"   # no letters: neither case
    short = "The user is Ben who likes short answers."
    assert judge.choose(JudgeQuery(short, "q", "Rain is great. I like it.", "Rain is great.")) == "B"
    assert judge.choose(JudgeQuery(short, "q", "Rain is great", "Rain is great. I like it.")) == "tie"  # no sentence end
    both = "The user is Cleo who likes answers in lower case and answers ending with a period."
    assert judge.choose(JudgeQuery(both, "q", "rain is great!", "RAIN IS GREAT.")) == "tie"  # one pole each
    assert judge.choose(JudgeQuery(both, "q", "rain is great.", "rain is great!")) == "A"
    mood = "The user is Dan who likes positive answers."
    assert judge.choose(JudgeQuery(mood, "q", "rain is sad.", "rain is lovely.")) == "B"
    assert judge.choose(JudgeQuery(mood, "q", "rain is sad and lovely.", "rain is.")) == "tie"
    with pytest.raises(ValueError, match="knows synthetic users only"):
        judge.choose(JudgeQuery("The user is a child.", "q", "a", "b"))


def test_the_exact_judge_through_the_command(tmp_path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    rows = {"1": ("Ada who likes answers in upper case", "What is rain?"),
            "2": ("Ben who likes short answers", "What is snow?")}
    for path, system, texts in ((a, "fspo", ("RAIN IS GREAT.", "Snow is bad. I like it.")),
                                (b, "sft", ("rain is great.", "Snow is bad."))):
        path.write_text("".join(json.dumps({"id": i, "user": u, "user_description": f"The user is {u}.",
                                            "question": q, "response": t, "system": system}) + "\n"
                                for (i, (u, q)), t in zip(rows.items(), texts)))
    assert judge_main([str(tmp_path / "out"), "--generations", str(a), str(b), "--baseline", "sft",
                       "--judge", "exact", "--no-progress"]) == 0
    rates = json.loads((tmp_path / "out" / "win_rates.json").read_text())
    assert rates["judge"] == "exact"
    assert rates["systems"]["fspo"]["per_user"]["Ada who likes answers in upper case"]["win_rate"] == 1.0
    assert rates["systems"]["fspo"]["per_user"]["Ben who likes short answers"]["win_rate"] == 0.0
    assert rates["systems"]["fspo"]["overall"]["win_rate"] == 0.5
    assert not (tmp_path / "out" / "judge_cache.jsonl").exists()


def test_answer_flags_end_clean_loop_and_follow() -> None:
    from fspo_recipe.judge.answers import answer_flags, is_clean, loops

    upper = {"user": "Ada who likes answers in upper case", "user_description": "The user is Ada who likes answers "
             "in upper case."}
    good = answer_flags({**upper, "generated": "## Preferred Response \nRAIN IS GREAT.\n", "response": "RAIN IS GREAT.",
                         "ended": True})
    assert good == {"ended": True, "clean": True, "loops": False, "follows": True, "follows_upper": True}
    run_on = answer_flags({**upper, "generated": "## Preferred Response \nRAIN IS GREAT.\n\n## Example 3\n## Question",
                           "response": "RAIN IS GREAT.", "ended": False})
    assert (run_on["clean"], run_on["ended"], run_on["follows"]) == (False, False, True)  # the judge reads the cut
    assert not is_clean("## Question \nWhat is ice?\n## Preferred Response \nIce is cold.")
    assert not is_clean("## Preferred Response \n")  # nothing written
    assert is_clean("## User Description\nThe user likes short answers.\n## Preferred Response \nRain is great.")
    assert not is_clean("Rain is great.\n## Dispreferred Response \nrain.")
    assert loops("A bell is a bell is a bell is a bell.") and not loops("A bell is a bell. It rings a bell.")
    lower_long = answer_flags({"user": "Eva50", "user_description": "The user is Eva50 who likes answers in lower case "
                               "and long answers.", "generated": "rain is great."})
    assert lower_long["ended"] is None  # a file that does not say
    assert (lower_long["follows"], lower_long["follows_lower"], lower_long["follows_long"]) == (False, True, False)
    assert "follows" not in answer_flags({"user": "a child", "generated": "Hi."})  # not a synthetic user


def test_the_judge_reports_answer_figures_of_every_system(tmp_path) -> None:
    from fspo_recipe.judge.answers import answer_figures

    rows = [("1", "Ada who likes answers in upper case", "RAIN IS GREAT.", True),
            ("2", "Ben who likes short answers", "Snow is bad. I like it. Snow is bad. I like it. Snow is bad. I like "
             "it.", False)]
    figures = answer_figures([{"id": i, "user": u, "generated": t, "ended": e} for i, u, t, e in rows], samples=200)
    assert figures["follows"]["share"] == 0.5 and figures["follows"]["answers"] == 2
    assert figures["loops"]["count"] == 1 and figures["ended"]["share"] == 0.5
    assert figures["follows_upper"]["share"] == 1.0 and figures["follows_short"]["share"] == 0.0
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    for path, system, texts in ((a, "fspo", [t for _, _, t, _ in rows]), (b, "base", ["rain.", "snow is bad."])):
        path.write_text("".join(json.dumps({"id": i, "user": u, "question": "q", "response": t, "generated": t,
                                            "ended": e, "system": system}) + "\n"
                                for (i, u, _, e), t in zip(rows, texts)))
    assert judge_main([str(tmp_path / "out"), "--generations", str(a), str(b), "--baseline", "base",
                       "--judge", "exact", "--no-progress"]) == 0
    answers = json.loads((tmp_path / "out" / "win_rates.json").read_text())["answers"]
    assert answers["fspo"]["follows"]["share"] == 0.5 and answers["fspo"]["loops"]["share"] == 0.5
    assert answers["base"]["follows"]["share"] == 0.5 and answers["base"]["follows_upper"]["share"] == 0.0
