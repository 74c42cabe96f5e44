"""Requests to any OpenAI-compatible server (vLLM, SGLang, OpenAI), shared by ``fspo-judge`` and ``fspo-generate``.

Requests go through the ``openai`` client library (``pip install 'fspo-fairseq2[judge]'``), at most ``concurrency``
at a time, each with a timeout. Rate limits (429, honouring Retry-After) and server errors (5xx, 408, 409, timeouts,
dropped connections, and answers that are not a completion, such as an HTML page or text that is not JSON) are
retried with exponential backoff and jitter; a reply the caller does not accept (``accept``) is asked again up to
``parse_retries`` times. A server that refuses every request (a wrong key, model or address: 401, 403, 404) stops
the run with :class:`ServerRefusedError`; another 4xx is that request's failure. The API key is handed to the
client only: every text returned has credentials redacted (:func:`redact`).
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Literal

Endpoint = Literal["chat", "completions"]


class ServerRefusedError(RuntimeError):
    """The server refuses every request (a wrong key, model or address): stop instead of failing each one."""


class ClientInputError(ValueError):
    """An option or environment variable cannot be used; the message says which."""


@dataclass(frozen=True)
class ClientSettings:
    base_url: str | None
    """The server's ``/v1`` address (``None``: OpenAI's)."""
    concurrency: int = 8
    timeout: float = 120.0
    """Seconds per request."""
    max_retries: int = 6
    """Retries of a request after rate limits, server errors and timeouts."""
    parse_retries: int = 2
    """Requests again after a reply the caller does not accept."""
    backoff: float = 1.0
    """First wait before a retry, seconds; doubled each time (with jitter), at most 60 s."""


@dataclass
class Usage:
    """Requests and tokens of one run (answers found in a cache or an earlier run's output cost nothing)."""

    requests: int = 0
    retries: int = 0
    cached: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def line(self, what: str, cached: str = "answered before") -> str:
        return (f"{what}: {self.prompt_tokens} prompt + {self.completion_tokens} completion tokens in "
                f"{self.requests} request(s) ({self.retries} retried); {self.cached} {cached}")


@dataclass(frozen=True)
class Reply:
    """The outcome of one request: the accepted text, or an error (with the last text the caller did not accept).
    ``final``: False when the request gave up on a transient error (worth asking again in a later run)."""

    text: str | None
    error: str | None
    final: bool = True


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


def api_key_from_env(variable: str, base_url: str | None) -> str:
    """The API key from ``variable``; a local server (``base_url``) may need none."""
    key = os.environ.get(variable, "")
    if key:
        return key
    if base_url is None:
        raise ClientInputError(f"the API key is read from the environment variable {variable}, which is not set "
                               "(export it, or point --base-url at a local server).")
    return "EMPTY"  # vLLM and SGLang accept any key unless started with --api-key


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


def reply_text(response: Any, endpoint: Endpoint = "chat") -> str | None:
    """The text of a chat or text completion; None when ``response`` is not one: a server answering 200 with an HTML
    page (a str), with another JSON object (no ``choices``), with no choice at all, or with a choice whose text is
    missing or not a string. Such a reply is a failed request (retried, then counted), never an empty answer."""
    choices = getattr(response, "choices", None)
    if not isinstance(choices, list) or not choices:
        return None
    if endpoint == "completions":
        text = getattr(choices[0], "text", None)
    else:
        text = getattr(getattr(choices[0], "message", None), "content", None)
    return text if isinstance(text, str) else None


def short(ex: object) -> str:
    text = " ".join(str(getattr(ex, "message", None) or ex).split())
    return text[:200]


class OpenAIClient:
    """Sends request bodies to one server as the module docstring says; counts :class:`Usage`."""

    def __init__(self, settings: ClientSettings, api_key: str) -> None:
        self.settings = settings
        self.usage = Usage()
        self._api_key = api_key

    def run_all(self, bodies: Sequence[tuple[Endpoint, Mapping[str, Any]]],
                done: Callable[[int, Reply], None], accept: Callable[[str], bool] = lambda text: True,
                unaccepted: str = "no acceptable answer") -> None:
        """Send every ``(endpoint, body)``, at most ``concurrency`` at once; ``done(index, reply)`` is called as
        each one ends (in the calling thread, in completion order). A reply ``accept`` refuses every time ends as
        the error "``unaccepted`` in N replies"."""
        asyncio.run(self._run_all(bodies, done, accept, unaccepted))

    async def _run_all(self, bodies: Sequence[tuple[Endpoint, Mapping[str, Any]]],
                       done: Callable[[int, Reply], None], accept: Callable[[str], bool], unaccepted: str) -> None:
        try:
            import openai
        except ImportError:
            raise ClientInputError("requests to a server need the openai client: pip install "
                                   "'fspo-fairseq2[judge]' (or pip install openai).") from None
        client = openai.AsyncOpenAI(base_url=self.settings.base_url, api_key=self._api_key, max_retries=0,
                                    timeout=self.settings.timeout)
        limit = asyncio.Semaphore(self.settings.concurrency)

        async def one(index: int, endpoint: Endpoint, body: Mapping[str, Any]) -> None:
            async with limit:
                reply = await self._ask(client, openai, endpoint, body, accept, unaccepted)
            done(index, reply)

        try:
            tasks = [asyncio.create_task(one(i, e, b)) for i, (e, b) in enumerate(bodies)]
            try:
                await asyncio.gather(*tasks)
            except BaseException:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
        finally:
            await client.close()

    async def _ask(self, client: Any, openai: Any, endpoint: Endpoint, body: Mapping[str, Any],
                   accept: Callable[[str], bool], what: str) -> Reply:
        """Send one request until its reply is accepted, retrying as the module docstring says."""
        s = self.settings
        failures = unaccepted = 0
        create: Callable[..., Awaitable[Any]] = (client.chat.completions.create if endpoint == "chat"
                                                 else client.completions.create)
        while True:
            self.usage.requests += 1
            wait: float | None = None
            error: str | None = None
            text: str | None = None
            try:
                response = await create(**body)
            except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as ex:
                raise ServerRefusedError(redact(
                    f"the server at {s.base_url or 'OpenAI'} refused the request ({ex.status_code}: {short(ex)}); "
                    "check --base-url, --model and the API key's environment variable.", [self._api_key])) from None
            except openai.RateLimitError as ex:
                error, wait = f"rate limited (429: {short(ex)})", _retry_after(ex.response)
            except openai.APIStatusError as ex:
                if ex.status_code < 500 and ex.status_code not in (408, 409):
                    return Reply(None, redact(f"the server rejected the request ({ex.status_code}: {short(ex)})",
                                              [self._api_key]))
                error = f"server error ({ex.status_code}: {short(ex)})"
            except openai.APITimeoutError:
                error = f"no answer within {s.timeout:g} s"
            except openai.APIConnectionError as ex:
                error = f"connection failed ({short(ex)})"
            except (ValueError, openai.APIResponseValidationError) as ex:  # a body that is not JSON, or not readable
                error = f"the server's answer is not JSON ({short(ex)})"
            else:
                text = reply_text(response, endpoint)
                if text is None:
                    error = f"the server's answer is not a completion ({short(response)})"
            if error is None:
                assert text is not None
                usage = getattr(response, "usage", None)
                if usage is not None:
                    self.usage.prompt_tokens += getattr(usage, "prompt_tokens", 0) or 0
                    self.usage.completion_tokens += getattr(usage, "completion_tokens", 0) or 0
                if accept(text):
                    return Reply(redact(text, [self._api_key]), None)
                unaccepted += 1
                if unaccepted > s.parse_retries:
                    return Reply(redact(text, [self._api_key]), f"{what} in {unaccepted} replies")
                self.usage.retries += 1
                continue
            failures += 1
            if failures > s.max_retries:
                return Reply(None, redact(f"{error}; gave up after {failures} attempt(s)", [self._api_key]),
                             final=False)
            self.usage.retries += 1
            if wait is None:
                wait = min(60.0, s.backoff * 2 ** (failures - 1)) * random.uniform(0.75, 1.25)
            await asyncio.sleep(min(wait, 300.0))
