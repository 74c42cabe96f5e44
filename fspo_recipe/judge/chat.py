"""A judge behind any OpenAI-compatible chat-completions endpoint: a local vLLM or SGLang server, or OpenAI.

Requests go through :class:`fspo_recipe.openai_client.OpenAIClient` (shared with ``fspo-generate``): at most
``concurrency`` at a time, each with a timeout, rate limits and server errors retried with backoff; a reply without
one clear verdict is asked again, then recorded as a failure. Every answered request is appended to a JSONL cache keyed by the exact request body, so that a second
run, or a run after a crash, sends nothing already answered; failures in the cache are sent again by the next run
(which says how many). The API key is read from an environment variable by the caller and handed to the client
only; it is written nowhere: every text this module records or returns has credentials redacted.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, final

from fspo_recipe.files import complete_lines
from fspo_recipe.openai_client import ClientInputError, ClientSettings, OpenAIClient, Reply, ServerRefusedError, Usage
from fspo_recipe.openai_client import api_key_from_env as client_api_key
from fspo_recipe.judge.matchups import JudgeInputError
from fspo_recipe.judge.verdicts import JudgeQuery, Verdict, parse_choice

DEFAULT_TEMPLATE: Final = Path(__file__).with_name("judge_prompt.txt")
PLACEHOLDERS: Final = ("{description}", "{question}", "{answer_a}", "{answer_b}")


JudgeServerError = ServerRefusedError
"""The server refuses every request (a wrong key, model or address): stop instead of failing each pair."""


def read_template(path: Path) -> str:
    """A judge prompt template: text with the four placeholders ``{description}``, ``{question}``, ``{answer_a}``,
    ``{answer_b}`` (replaced literally; other braces are left alone)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as ex:
        raise JudgeInputError(f"{path}: cannot read the judge template ({ex.strerror}).") from None
    missing = [p for p in PLACEHOLDERS if p not in text]
    if missing:
        raise JudgeInputError(f"{path}: the judge template lacks {', '.join(missing)}.")
    return text


_PLACEHOLDER = re.compile("|".join(map(re.escape, PLACEHOLDERS)))


def render(template: str, query: JudgeQuery) -> str:
    # One pass over the template, so that an answer containing "{answer_b}" is not substituted again.
    values = {"{description}": query.description, "{question}": query.question, "{answer_a}": query.answer_a,
              "{answer_b}": query.answer_b}
    return _PLACEHOLDER.sub(lambda m: values[m.group(0)], template)


def request_key(body: Mapping[str, Any]) -> str:
    """The cache key of a request: SHA-256 of its body (model, messages, sampling settings) as canonical JSON."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


@final
class JudgeCache:
    """Answered requests, one JSON line each (``key``, ``model``, ``choice``, ``reply``, ``error``), appended as
    they arrive. A line cut short by a crash is dropped when the cache is opened again."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, dict[str, Any]] = {}
        if path.is_file():
            self._load()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fp = path.open("a", encoding="utf-8")

    def _load(self) -> None:
        for lineno, line in enumerate(complete_lines(self.path), 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                self.entries[str(entry["key"])] = entry
            except (json.JSONDecodeError, KeyError, TypeError) as ex:
                raise JudgeInputError(f"{self.path}, line {lineno}: not a judge cache entry ({ex}); "
                                      "move the file away to start a new cache.") from None

    def get(self, key: str) -> dict[str, Any] | None:
        """The cached verdict of request ``key``; None when it was never answered or its answer was a failure (a
        failure is asked again: the server may have been down, or the judge may answer this time)."""
        entry = self.entries.get(key)
        return entry if entry is not None and entry.get("choice") is not None else None

    def failures(self) -> int:
        """Requests whose cached answer is a failure."""
        return sum(entry.get("choice") is None for entry in self.entries.values())

    def put(self, entry: dict[str, Any]) -> None:
        self.entries[entry["key"]] = entry
        self._fp.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self._fp.flush()

    def close(self) -> None:
        self._fp.close()


@dataclass(frozen=True)
class ChatSettings:
    base_url: str | None
    """The server's ``/v1`` address (``None``: OpenAI's)."""
    model: str
    template: str
    concurrency: int = 8
    timeout: float = 120.0
    """Seconds per request."""
    max_retries: int = 6
    """Retries of a request after rate limits, server errors and timeouts."""
    parse_retries: int = 2
    """Requests again after a reply without a verdict."""
    backoff: float = 1.0
    """First wait before a retry, seconds; doubled each time (with jitter), at most 60 s."""
    max_tokens: int = 512
    temperature: float = 0.0
    extra_body: dict[str, Any] = field(default_factory=dict)
    """More request fields (e.g. ``{"chat_template_kwargs": {"enable_thinking": false}}`` for vLLM)."""


@final
class ChatJudge:
    """Judges through chat completions (see the module docstring)."""

    name = "chat"

    def __init__(self, settings: ChatSettings, api_key: str, cache: JudgeCache) -> None:
        self.settings = settings
        self.cache = cache
        self.client = OpenAIClient(ClientSettings(settings.base_url, settings.concurrency, settings.timeout,
                                                  settings.max_retries, settings.parse_retries, settings.backoff),
                                   api_key)

    def body(self, query: JudgeQuery) -> dict[str, Any]:
        s = self.settings
        return {"model": s.model, "messages": [{"role": "user", "content": render(s.template, query)}],
                "temperature": s.temperature, "max_tokens": s.max_tokens, **s.extra_body}

    def judge_all(self, queries: Sequence[JudgeQuery], tick: Callable[[Verdict], None] = lambda v: None
                  ) -> list[Verdict]:
        bodies = [self.body(q) for q in queries]
        keys = [request_key(b) for b in bodies]
        copies = Counter(keys)
        verdicts: dict[str, Verdict] = {}
        todo: dict[str, dict[str, Any]] = {}
        for key, body in zip(keys, bodies):
            entry = self.cache.get(key)
            if entry is not None:
                verdicts[key] = Verdict(entry.get("choice"), entry.get("reply"), entry.get("error"), cached=True)
            else:
                todo.setdefault(key, body)  # identical requests are sent once
        self.client.usage.cached = len(verdicts)
        retried = sum(1 for key in todo if key in self.cache.entries)
        if retried:
            print(f"fspo-judge: asking again {retried} request(s) whose cached answer is a failure", file=sys.stderr)
        for key in keys:
            if key in verdicts:
                tick(verdicts[key])
        order = list(todo)

        def done(index: int, reply: Reply) -> None:
            key = order[index]
            choice = parse_choice(reply.text) if reply.error is None and reply.text is not None else None
            verdict = Verdict(choice, reply.text, reply.error)  # type: ignore[arg-type]
            if reply.final:  # a request that gave up on a transient error is not cached: a later run asks again
                self.cache.put({"key": key, "model": self.settings.model, "choice": choice, "reply": reply.text,
                                "error": reply.error})
            verdicts[key] = verdict
            for _ in range(copies[key]):
                tick(verdict)

        self.client.run_all([("chat", todo[k]) for k in order], done,
                            accept=lambda text: parse_choice(text) is not None, unaccepted="no clear verdict")
        return [verdicts[k] for k in keys]

    @property
    def usage(self) -> Usage:
        return self.client.usage


def api_key_from_env(variable: str, base_url: str | None) -> str:
    """The API key from ``variable`` (see :func:`fspo_recipe.openai_client.api_key_from_env`)."""
    try:
        return client_api_key(variable, base_url)
    except ClientInputError as ex:
        raise JudgeInputError(str(ex)) from None
