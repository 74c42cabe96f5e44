"""A judge behind any OpenAI-compatible chat-completions endpoint: a local vLLM or SGLang server, or OpenAI.

Requests go through the ``openai`` client library (``pip install 'fspo-fairseq2[judge]'``), at most
``concurrency`` at a time, each with a timeout. Rate limits (429, honouring Retry-After) and server errors (5xx,
timeouts, dropped connections, and answers that are not a chat completion, such as an HTML page or text that is
not JSON) are retried with exponential backoff; a reply without one clear verdict is asked again, then recorded as
a failure. Every answered request is appended to a JSONL cache keyed by the exact request body, so that a second
run, or a run after a crash, sends nothing already answered; failures in the cache are sent again by the next run
(which says how many). The API key is read from an environment variable by the caller and handed to the client
only; it is written nowhere: every text this module records or returns has credentials redacted.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Final, final

from fspo_recipe.files import complete_lines
from fspo_recipe.judge.matchups import JudgeInputError
from fspo_recipe.judge.verdicts import JudgeQuery, Verdict, parse_choice

DEFAULT_TEMPLATE: Final = Path(__file__).with_name("judge_prompt.txt")
PLACEHOLDERS: Final = ("{description}", "{question}", "{answer_a}", "{answer_b}")


class JudgeServerError(RuntimeError):
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


_CREDENTIALS = re.compile(r"(?i)(bearer\s+|authorization[\"']?\s*[:=]\s*[\"']?(?:bearer\s+)?|api[-_]?key[\"']?\s*[:=]\s*"
                          r"[\"']?)[^\s\"',}]+|\bsk-[A-Za-z0-9_\-]{8,}")


def redact(text: str | None, secrets: Sequence[str] = ()) -> str | None:
    """``text`` without credentials: the given ``secrets`` (the API key), ``Bearer ...`` and ``Authorization: ...``
    values, ``api_key=...`` and ``sk-...`` keys (a server's error page may echo the request's headers)."""
    if text is None:
        return None
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "[REDACTED]")
    return _CREDENTIALS.sub(lambda m: (m.group(1) or "") + "[REDACTED]", text)


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


@dataclass
class Usage:
    """Requests and tokens of one run (cached answers cost nothing)."""

    requests: int = 0
    retries: int = 0
    cached: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def line(self) -> str:
        return (f"judge cost: {self.prompt_tokens} prompt + {self.completion_tokens} completion tokens in "
                f"{self.requests} request(s) ({self.retries} retried); {self.cached} answered from the cache")


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


def _retry_after(response: Any) -> float | None:
    headers = getattr(response, "headers", None) or {}
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000.0
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


@final
class ChatJudge:
    """Judges through chat completions (see the module docstring)."""

    name = "chat"

    def __init__(self, settings: ChatSettings, api_key: str, cache: JudgeCache) -> None:
        self.settings = settings
        self.cache = cache
        self.usage = Usage()
        self._api_key = api_key

    def body(self, query: JudgeQuery) -> dict[str, Any]:
        s = self.settings
        return {"model": s.model, "messages": [{"role": "user", "content": render(s.template, query)}],
                "temperature": s.temperature, "max_tokens": s.max_tokens, **s.extra_body}

    def judge_all(self, queries: Sequence[JudgeQuery], tick: Callable[[Verdict], None] = lambda v: None
                  ) -> list[Verdict]:
        return asyncio.run(self._judge_all(queries, tick))

    async def _judge_all(self, queries: Sequence[JudgeQuery], tick: Callable[[Verdict], None]) -> list[Verdict]:
        try:
            import openai
        except ImportError:
            raise JudgeInputError("the chat judge needs the openai client: pip install 'fspo-fairseq2[judge]' "
                                  "(or pip install openai).") from None
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
        self.usage.cached = len(verdicts)
        retried = sum(1 for key in todo if key in self.cache.entries)
        if retried:
            print(f"fspo-judge: asking again {retried} request(s) whose cached answer is a failure", file=sys.stderr)
        for key in keys:
            if key in verdicts:
                tick(verdicts[key])
        client = openai.AsyncOpenAI(base_url=self.settings.base_url, api_key=self._api_key, max_retries=0,
                                    timeout=self.settings.timeout)
        limit = asyncio.Semaphore(self.settings.concurrency)

        async def one(key: str, body: dict[str, Any]) -> None:
            async with limit:
                verdict = await self._ask(client, openai, key, body)
            verdicts[key] = verdict
            for _ in range(copies[key]):
                tick(verdict)

        try:
            tasks = [asyncio.create_task(one(k, b)) for k, b in todo.items()]
            try:
                await asyncio.gather(*tasks)
            except BaseException:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
        finally:
            await client.close()
        return [verdicts[k] for k in keys]

    async def _ask(self, client: Any, openai: Any, key: str, body: dict[str, Any]) -> Verdict:
        """Send one request until it is answered with a verdict, retrying as the module docstring says."""
        s = self.settings
        failures = 0
        unparsed = 0
        while True:
            self.usage.requests += 1
            wait: float | None = None
            error: str | None = None
            try:
                response = await client.chat.completions.create(**body)
            except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as ex:
                raise JudgeServerError(f"the judge server at {s.base_url or 'OpenAI'} refused the request "
                                       f"({ex.status_code}: {_short(ex)}); check --base-url, --model and the API "
                                       "key's environment variable.") from None
            except openai.RateLimitError as ex:
                error, wait = f"rate limited (429: {_short(ex)})", _retry_after(ex.response)
            except openai.APIStatusError as ex:
                if ex.status_code < 500 and ex.status_code not in (408, 409):
                    return self._record(key, None, None, f"the server rejected the request ({ex.status_code}: "
                                                         f"{_short(ex)})")
                error = f"server error ({ex.status_code}: {_short(ex)})"
            except openai.APITimeoutError:
                error = f"no answer within {s.timeout:g} s"
            except openai.APIConnectionError as ex:
                error = f"connection failed ({_short(ex)})"
            except (ValueError, openai.APIResponseValidationError) as ex:  # a body that is not JSON, or not readable
                error = f"the server's answer is not JSON ({_short(ex)})"
            else:
                reply = _reply_text(response)
                if reply is None:
                    error = f"the server's answer is not a chat completion ({_short(response)})"
            if error is None:
                usage = getattr(response, "usage", None)
                if usage is not None:
                    self.usage.prompt_tokens += getattr(usage, "prompt_tokens", 0) or 0
                    self.usage.completion_tokens += getattr(usage, "completion_tokens", 0) or 0
                choice = parse_choice(reply)
                if choice is not None:
                    return self._record(key, choice, reply, None)
                unparsed += 1
                if unparsed > s.parse_retries:
                    return self._record(key, None, reply, f"no clear verdict in {unparsed} replies")
                self.usage.retries += 1
                continue
            failures += 1
            if failures > s.max_retries:
                # Not cached: a later run tries again.
                return Verdict(None, None, redact(f"{error}; gave up after {failures} attempt(s)", [self._api_key]))
            self.usage.retries += 1
            if wait is None:
                wait = min(60.0, s.backoff * 2 ** (failures - 1)) * random.uniform(0.75, 1.25)
            await asyncio.sleep(min(wait, 300.0))

    def _record(self, key: str, choice: str | None, reply: str | None, error: str | None) -> Verdict:
        reply, error = redact(reply, [self._api_key]), redact(error, [self._api_key])
        self.cache.put({"key": key, "model": self.settings.model, "choice": choice, "reply": reply, "error": error})
        return Verdict(choice, reply, error)  # type: ignore[arg-type]


def _reply_text(response: Any) -> str | None:
    """The assistant's text of a chat completion; None when ``response`` is not one (a server answering 200 with an
    HTML page gives a str, one with another JSON object gives no ``choices``)."""
    choices = getattr(response, "choices", None)
    if not isinstance(choices, list):
        return None
    if not choices:
        return ""
    message = getattr(choices[0], "message", None)
    content = getattr(message, "content", None)
    return content if isinstance(content, str) else ""


def _short(ex: object) -> str:
    text = " ".join(str(getattr(ex, "message", None) or ex).split())
    return text[:200]


def api_key_from_env(variable: str, base_url: str | None) -> str:
    """The API key from ``variable``; a local server (``--base-url``) may need none."""
    key = os.environ.get(variable, "")
    if key:
        return key
    if base_url is None:
        raise JudgeInputError(f"the API key is read from the environment variable {variable}, which is not set "
                              "(export it, or point --base-url at a local server).")
    return "EMPTY"  # vLLM and SGLang accept any key unless started with --api-key
