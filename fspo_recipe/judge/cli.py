"""``fspo-judge``: pairwise win rates per user from generation files (``preference_eval generation.enabled=true``).

    # a judge served by vLLM (or SGLang, or OpenAI without --base-url); the key, if any, from $OPENAI_API_KEY
    fspo-judge OUT --generations fspo=eval_fspo/generations.jsonl sft=eval_sft/generations.jsonl \\
        --baseline sft --judge chat --base-url http://localhost:8000/v1 --model Qwen/Qwen3-32B

    # synthetic users (fspo-synthetic-users): the exact judge, no model
    fspo-judge OUT --generations fspo=a.jsonl sft=b.jsonl --baseline sft --judge exact

Every other system is compared with the baseline on the questions both answered, in both orders (disagreeing
orders are a tie, half a win). Writes OUT/judgments.jsonl (one line per question and system: both verdicts and
the outcome), OUT/win_rates.json and OUT/win_rates.csv (overall and per user, 95% bootstrap intervals, wins, ties,
losses, failures) and OUT/win_rates.png; the chat judge's answers are cached in OUT/judge_cache.jsonl (--cache),
so running again sends only what was not answered. win_rates.json also gives, per system, the shares of answers that
end by themselves, are clean of the prompt's template, loop, and (synthetic users) follow the user
(fspo_recipe/judge/answers.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fspo_recipe.cli import run_command
from fspo_recipe.files import atomic_file
from fspo_recipe.judge.answers import answer_figures, figure_cell
from fspo_recipe.judge.chat import (DEFAULT_TEMPLATE, ChatJudge, ChatSettings, JudgeCache, JudgeServerError,
                                    api_key_from_env, read_template)
from fspo_recipe.judge.exact import ExactJudge
from fspo_recipe.judge.matchups import JudgeInputError, System, build_matchups, load_systems, read_descriptions
from fspo_recipe.judge.verdicts import JudgeQuery, Verdict, outcome_name, system_score
from fspo_recipe.judge.winrates import win_rates, write_outputs
from fspo_recipe.lock import OutputInUseError, OutputLock
from fspo_recipe.progress import ProgressBar


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fspo-judge", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="output directory")
    p.add_argument("--generations", nargs="+", required=True, metavar="[NAME=]FILE",
                   help="generation files, one per system (name: NAME, else the records' 'system', else the stem)")
    p.add_argument("--baseline", required=True, help="the system every other one is compared with")
    p.add_argument("--include-chosen", action="store_true",
                   help="also judge the data's preferred answers ('reference_chosen') as the system data_chosen")
    p.add_argument("--judge", choices=("chat", "exact"), default="chat",
                   help="chat: an OpenAI-compatible server (default); exact: synthetic users' hidden preferences")
    p.add_argument("--descriptions", type=Path, help="JSON object user -> description (overrides the files')")
    p.add_argument("--max-per-system", type=int, help="judge only the first N questions of each system")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the intervals (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    chat = p.add_argument_group("chat judge")
    chat.add_argument("--base-url", help="the server's /v1 address, e.g. http://localhost:8000/v1 (default: OpenAI)")
    chat.add_argument("--model", help="the judge model's name on the server")
    chat.add_argument("--api-key-env", default="OPENAI_API_KEY",
                      help="environment variable holding the API key (default OPENAI_API_KEY; never pass the key "
                           "itself)")
    chat.add_argument("--template", type=Path, default=DEFAULT_TEMPLATE,
                      help="judge prompt template with {description} {question} {answer_a} {answer_b} "
                           f"(default: {DEFAULT_TEMPLATE.name} in the package)")
    chat.add_argument("--concurrency", type=int, default=8, help="requests in flight at most (default 8)")
    chat.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default 120)")
    chat.add_argument("--max-retries", type=int, default=6,
                      help="retries after a rate limit, server error or timeout (default 6)")
    chat.add_argument("--parse-retries", type=int, default=2,
                      help="requests again after a reply without 'Preferred: A/B' (default 2)")
    chat.add_argument("--backoff", type=float, default=1.0, help="first retry wait in seconds, doubling (default 1)")
    chat.add_argument("--max-tokens", type=int, default=512, help="longest judge reply in tokens (default 512)")
    chat.add_argument("--temperature", type=float, default=0.0, help="judge sampling temperature (default 0)")
    chat.add_argument("--extra-body", type=json.loads, default={},
                      help='more request fields as JSON, e.g. \'{"chat_template_kwargs": {"enable_thinking": false}}\'')
    chat.add_argument("--cache", type=Path, help="the request cache (default OUT/judge_cache.jsonl)")
    return p


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for name in ("concurrency", "bootstrap"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    for name in ("max_retries", "parse_retries", "max_tokens"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0")
    if args.timeout <= 0 or args.backoff < 0:
        p.error("--timeout must be > 0 and --backoff >= 0")
    if args.max_per_system is not None and args.max_per_system < 1:
        p.error("--max-per-system must be >= 1")
    if args.judge == "chat" and not args.model:
        p.error("--judge chat needs --model (the judge model's name on the server)")
    if not isinstance(args.extra_body, dict):
        p.error("--extra-body must be a JSON object")
    if args.out.exists() and not args.out.is_dir():
        p.error(f"{args.out} exists and is not a directory")


def run(args: argparse.Namespace) -> dict[str, Any]:
    systems = load_systems(args.generations, include_chosen=args.include_chosen)
    descriptions = read_descriptions(args.descriptions) if args.descriptions else None
    matchups, warnings = build_matchups(systems, args.baseline, descriptions=descriptions, limit=args.max_per_system)
    for w in warnings:
        print(f"fspo-judge: {w}", file=sys.stderr)
    queries: list[JudgeQuery] = []
    for m in matchups:
        ab = JudgeQuery(m.description, m.question, m.answer, m.baseline_answer)
        queries += [ab, ab.swapped()]

    cache = None
    if args.judge == "exact":
        judge: Any = ExactJudge()
        judge_name = "exact"
    else:
        settings = ChatSettings(args.base_url, args.model, read_template(args.template), args.concurrency,
                                args.timeout, args.max_retries, args.parse_retries, args.backoff, args.max_tokens,
                                args.temperature, args.extra_body)
        api_key = api_key_from_env(args.api_key_env, args.base_url)
        cache = JudgeCache(args.cache or args.out / "judge_cache.jsonl")
        judge = ChatJudge(settings, api_key, cache)
        judge_name = f"chat:{args.model}"
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"fspo-judge: {len(matchups)} matchups ({', '.join(s for s in systems if s != args.baseline)} against "
          f"{args.baseline}), {len(queries)} judgments with the {judge_name} judge", file=sys.stderr)
    try:
        with ProgressBar(not args.no_progress, "judging", len(queries)) as advance:
            counts = {"judged": 0, "failed": 0}

            def tick(verdict: Verdict) -> None:
                counts["judged" if verdict.choice is not None else "failed"] += 1
                advance(1, f"judging: {counts['judged']} judged, {counts['failed']} failed")

            verdicts = judge.judge_all(queries, tick)
    finally:
        if cache is not None:
            cache.close()

    scores = [system_score(verdicts[2 * i], verdicts[2 * i + 1]) for i in range(len(matchups))]
    with atomic_file(args.out / "judgments.jsonl") as fp:
        for i, (m, score) in enumerate(zip(matchups, scores)):
            first, second = verdicts[2 * i], verdicts[2 * i + 1]
            fp.write(json.dumps({
                "id": m.id, "user": m.user, "system": m.system, "baseline": m.baseline, "question": m.question,
                "system_as_a": first.choice, "system_as_b": second.choice, "score": score,
                "outcome": outcome_name(score),
                "errors": [v.error for v in (first, second) if v.error] or None,
            }, ensure_ascii=False) + "\n")
    result = {"judge": judge_name, "baseline": args.baseline,
              "template": None if args.judge == "exact" else str(args.template),
              "systems": win_rates(matchups, scores, samples=args.bootstrap, seed=args.seed),
              "answers": system_answers(systems, descriptions, args)}
    if args.judge == "chat":
        result["usage"] = vars(judge.usage)
    write_outputs(args.out, result)
    print(table(result))
    if args.judge == "chat":
        print(judge.usage.line("judge cost", "answered from the cache"))
    return result


def system_answers(systems: Mapping[str, System], descriptions: Mapping[str, str] | None,
                   args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """:func:`~fspo_recipe.judge.answers.answer_figures` of every system's answers (the first ``--max-per-system``)."""
    out = {}
    for name, system in systems.items():
        records = [{"generated": a.generated, "response": a.text, "ended": a.ended, "user": a.user,
                    "user_description": (descriptions or {}).get(a.user) or a.description}
                   for a in list(system.answers.values())[: args.max_per_system]]
        out[name] = answer_figures(records, samples=args.bootstrap, seed=args.seed)
    return out


def table(result: dict[str, Any]) -> str:
    lines = [f"win rate against {result['baseline']} ({result['judge']} judge; ties count half)"]
    for system, r in result["systems"].items():
        o = r["overall"]
        rate = "n/a" if o["win_rate"] != o["win_rate"] else f"{o['win_rate']:.3f} [{o['ci95'][0]:.3f}, {o['ci95'][1]:.3f}]"
        lines.append(f"  {system:<16} {rate}  {o['wins']} wins, {o['ties']} ties, {o['losses']} losses, "
                     f"{o['failures']} failures; {o['users']} users")
    answers = result.get("answers") or {}
    flags = [f for f in ("follows", "ended", "clean", "loops") if any(f in a for a in answers.values())]
    if flags:
        lines.append("share of answers [95% interval]: " + ", ".join(ANSWER_FLAGS[f] for f in flags))
        for system, figures in answers.items():
            lines.append(f"  {system:<16} " + "  ".join(f"{f} {figure_cell(figures.get(f))}" for f in flags))
    return "\n".join(lines)


ANSWER_FLAGS = {"follows": "follows: has every pole its user prefers", "ended": "ended: stopped before the limit",
                "clean": "clean: no template text", "loops": "loops: a 4-word sequence 3+ times"}


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    check_args(p, args)

    def body() -> int:
        with OutputLock(args.out, "fspo-judge"):
            result = run(args)
        if all(r["overall"]["judged"] == 0 for r in result["systems"].values()):
            print("fspo-judge: every judgment failed (see judgments.jsonl 'errors').", file=sys.stderr)
            return 1
        return 0

    try:
        return run_command("fspo-judge", body, {JudgeInputError: 2, (JudgeServerError, OutputInUseError): 1})
    except KeyboardInterrupt:
        print("fspo-judge: interrupted; answered requests are in the cache, run again to go on.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
