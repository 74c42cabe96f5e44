"""The data sources (the three FSPO sources, and plain preference pairs), their exact schemas, and how their rows
become :class:`PreferenceRow`.

A source is read from a Hugging Face hub name (``Asap7772/elix_generations_gpt4omini_pref``), a local directory, or
local parquet / JSON / JSONL files; a user's own data in one of these schemas works the same way. Nothing here
imports torch or fairseq2.
"""

from __future__ import annotations

import json
import math
import re
from html.entities import name2codepoint
from html.parser import HTMLParser
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, NamedTuple


class SourceSchemaError(ValueError):
    """A source lacks a column (or has the wrong type there); the message names it and the expected schema."""


class PreferenceRow(NamedTuple):
    """One labelled preference of one user, source-independent."""

    row_id: str
    """``<source split>/<row index>``: where the row came from."""

    user: str
    """The user (Elix, Review: ``scorer_level``; Roleplay: ``level``)."""

    question: str
    preferred: str
    dispreferred: str

    preferred_description: str
    """Description of the user the preferred response was written for (the rationale target)."""

    dispreferred_description: str
    """Description of the user the dispreferred response was written for."""

    user_description: str = ""
    """Description of the user who judged the pair (what a win-rate judge is shown); empty if the source has none."""


@dataclass
class ReadReport:
    """What a source skipped, by reason, with counts. Nothing is skipped silently."""

    rows_read: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    flagged: dict[str, int] = field(default_factory=dict)
    """Rows kept but worth a look (e.g. a response equal to its question), by reason."""
    examples: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, reason: str, row_id: str) -> None:
        self._count(self.skipped, reason, row_id)

    def flag(self, reason: str, row_id: str) -> None:
        self._count(self.flagged, reason, row_id)

    def _count(self, counts: dict[str, int], reason: str, row_id: str) -> None:
        counts[reason] = counts.get(reason, 0) + 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < 3:
            shown.append(row_id)

    def lines(self) -> list[str]:
        return [
            f"skipped {count} row(s): {reason} (e.g. {', '.join(self.examples[reason])})"
            for reason, count in sorted(self.skipped.items())
        ] + [
            f"kept {count} row(s) with {reason} (e.g. {', '.join(self.examples[reason])})"
            for reason, count in sorted(self.flagged.items())
        ]


_ATTRIBUTE_SPLIT = re.compile(r"\s*(?:,|\band\b|_|\+|&|/)\s*|\s+")


def review_attributes(level: str) -> list[str]:
    """The attributes of a Review user: ``"positive concise"``, ``"positive_concise"`` -> [positive, concise]."""
    return [a for a in _ATTRIBUTE_SPLIT.split(level.strip().lower()) if a]


def elix_description(level: str) -> str:
    """The paper's Elix user description."""
    return f"The user is {level.strip()}."


def review_description(level: str) -> str:
    """The paper's Review user description, e.g. "This user prefers positive and concise reviews."."""
    return f"This user prefers {' and '.join(review_attributes(level))} reviews."


@dataclass(frozen=True)
class RowContext:
    """What a source's row mapping needs besides the columns: where the rows come from and what to report."""

    split: str
    """The source split (or file name) the rows come from; row ids are ``<split>/<index>``."""

    report: ReadReport
    """Skipped and flagged rows are counted here."""

    keep_identical: bool = False
    """Keep pairs whose preferred and dispreferred responses are equal (skipped and counted by default)."""

    min_score_ratio: float = 2.0
    """SHP: pairs whose higher comment score is less than this many times the lower are skipped and counted (the DPO
    code's filter; 1 keeps every pair)."""

    where: str = ""
    """The file (or hub data set and split) the rows come from, for errors."""

    lines: Sequence[int] | None = None
    """The line of each row in a JSON Lines file (None for other formats: rows are counted from 1)."""

    def locate(self, index: int) -> str:
        """Where row ``index`` is: ``FILE, line N`` (JSON Lines) or ``FILE, row N``."""
        if self.lines is not None and index < len(self.lines):
            return f"{self.where}, line {self.lines[index]}"
        return f"{self.where}, row {index + 1}"


RowMapping = Callable[["SourceSpec", Mapping[str, Sequence[Any]], RowContext], list[PreferenceRow]]


@dataclass(frozen=True)
class SourceSpec:
    """One data source: its name, exact schema, and how its columns become :class:`PreferenceRow`.

    Adding a source means writing one row mapping and calling :func:`register_source` with its spec; nothing
    else (reading, splits, episodes, writing) changes.
    """

    name: str
    """The name on the command line (``fspo-prepare NAME``)."""

    hub_name: str
    """The Hugging Face hub data set read when no local ``--input`` is given."""

    columns: Mapping[str, str]
    """Required column -> what it holds (shown in schema errors)."""

    default_shots: int
    """Shots per episode by default (the paper's value for this source)."""

    to_rows: RowMapping
    """Turns one split's columns into rows, counting bad rows in the context's report."""

    describe: Callable[[str], str] | None = None
    """The user's description (the rationale target) from a user/level text, for sources that derive it."""

    attributes: Callable[[str], list[str]] | None = None
    """A user's attributes (Review: ``positive concise`` -> [positive, concise]); sources that have them allow
    ``--split-mode interpolated`` (users with one attribute train, combinations test)."""

    plain: bool = False
    """Plain preference pairs without users (Anthropic HH, SHP, ...): each pair becomes one example in fairseq2's
    generic fields (``src`` = the prompt, ``tgt_chosen``, ``tgt_rejected``), no episodes."""

    test_fraction: float = 0.0
    """Plain sources published without a test split (StackExchange): this fraction of the prompts (seeded, every
    pair of a prompt on the same side) becomes the test split, as the DPO code holds out 1%."""

    hub_splits: tuple[str, ...] | None = None
    """The hub data set's splits to read (UltraFeedback: ``train_prefs``, ``test_prefs``; its ``*_sft`` and
    ``*_gen`` splits repeat the prompts for other uses); None: all."""

    def schema_text(self) -> str:
        return ", ".join(f"{c} ({what})" for c, what in self.columns.items())


SOURCES: dict[str, SourceSpec] = {}
"""The registered sources by name (see :func:`register_source`)."""


def register_source(spec: SourceSpec) -> SourceSpec:
    """Make ``spec`` available to ``fspo-prepare`` under ``spec.name``; a different spec under a taken name is an
    error, the same one again is a no-op."""
    old = SOURCES.get(spec.name)
    if old is not None and old != spec:
        raise ValueError(f"A data source named '{spec.name}' is already registered.")
    SOURCES[spec.name] = spec
    return spec


def get_source(name: str) -> SourceSpec:
    """The registered source ``name``; the error lists the known ones."""
    try:
        return SOURCES[name]
    except KeyError:
        raise ValueError(f"Unknown data source '{name}'; known sources: {', '.join(sorted(SOURCES))}.") from None


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


_JSON_TYPES: Final = ((bool, "true/false"), (int, "a number"), (float, "a number"), (list, "a list"),
                      (Mapping, "an object"))


def wrong_type(ctx: RowContext, row_id: str, fields: Mapping[str, Any]) -> bool:
    """Skip and count a row one of whose text ``fields`` holds something else than text (a list as ``prompt``), with
    the field and what it holds as the reason; ``None`` (a missing value) is left to the empty-text check."""
    for name, value in fields.items():
        if value is not None and not isinstance(value, str):
            kind = next((label for kls, label in _JSON_TYPES if isinstance(value, kls)), type(value).__name__)
            ctx.report.skip(f"field '{name}' is {kind}, not text", row_id)
            return True
    return False


def finite(ctx: RowContext, index: int, column: str, value: Any) -> float | None:
    """``value`` as a float; None when it is not a number; a NaN or infinite number is an error naming the file and
    line (it would pass every comparison-based filter and fake an order)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not math.isfinite(value):
        raise SourceSchemaError(f"{ctx.locate(index)}: {column} is {value}; expected a finite number.")
    return float(value)


def _check_columns(spec: SourceSpec, columns: Iterable[str], where: str) -> None:
    present = set(columns)
    missing = [c for c in spec.columns if c not in present]
    if missing:
        raise SourceSchemaError(
            f"{where}: missing column(s) {', '.join(map(repr, missing))} for the {spec.name} schema. "
            f"Expected columns: {spec.schema_text()}. Found: {', '.join(sorted(present)) or '(none)'}."
        )


def rows_from_columns(
    spec: SourceSpec, split: str, data: Mapping[str, Sequence[Any]], report: ReadReport, where: str, *,
    keep_identical: bool = False, min_score_ratio: float = 2.0, lines: Sequence[int] | None = None,
) -> list[PreferenceRow]:
    """Turn one split's columns (name -> list of values) into rows; bad rows are counted in ``report``. ``lines``:
    the line of each row in a JSON Lines file, for errors."""
    _check_columns(spec, data.keys(), where)
    report.rows_read += len(next(iter(data.values()))) if data else 0
    return spec.to_rows(spec, data, RowContext(split, report, keep_identical, min_score_ratio, where, lines))


EMPTY_TEXT = "empty question, response or user"


def accept_pair(ctx: RowContext, row_id: str, question: str, preferred: str, dispreferred: str) -> bool:
    """The checks every source applies to a (question, preferred, dispreferred) row: empty texts and identical
    responses are skipped (the latter unless ``keep_identical``), a response equal to its question is flagged."""
    if not (question and preferred and dispreferred):
        ctx.report.skip(EMPTY_TEXT, row_id)
        return False
    if preferred == dispreferred and not ctx.keep_identical:
        ctx.report.skip("preferred equal to dispreferred (--keep-identical-pairs keeps them)", row_id)
        return False
    if question in (preferred, dispreferred):
        ctx.report.flag("a response equal to its question", row_id)
    return True


_PAIRWISE_COLUMNS = {
    "prompt": "the question",
    "response_x": "first response",
    "response_y": "second response",
    "level_x": "user response_x was written for",
    "level_y": "user response_y was written for",
    "scorer_level": "the user who judged the pair",
    "label": "0 if response_x is preferred, 1 if response_y is",
}


def scored_pair_rows(spec: SourceSpec, data: Mapping[str, Sequence[Any]], ctx: RowContext) -> list[PreferenceRow]:
    """Elix / Review: two responses, each written for a level, and a label saying which the scorer preferred."""
    describe = spec.describe or elix_description
    out: list[PreferenceRow] = []
    cols = [data[c] for c in ("prompt", "response_x", "response_y", "level_x", "level_y", "scorer_level", "label")]
    for i, (q, rx, ry, lx, ly, user, label) in enumerate(zip(*cols)):
        row_id = f"{ctx.split}/{i}"
        if label not in (0, 1) or isinstance(label, bool):
            ctx.report.skip("label not 0 or 1", row_id)
            continue
        if wrong_type(ctx, row_id, {"prompt": q, "response_x": rx, "response_y": ry, "scorer_level": user,
                                    "level_x": lx, "level_y": ly}):
            continue
        q, rx, ry, user = _text(q), _text(rx), _text(ry), _text(user)
        if not user:
            ctx.report.skip(EMPTY_TEXT, row_id)
            continue
        preferred, dispreferred = (rx, ry) if label == 0 else (ry, rx)
        if not accept_pair(ctx, row_id, q, preferred, dispreferred):
            continue
        lx, ly = _text(lx) or user, _text(ly) or user
        lp, ld = (lx, ly) if label == 0 else (ly, lx)
        out.append(PreferenceRow(row_id, user, q, preferred, dispreferred, describe(lp), describe(ld), describe(user)))
    return out


def persona_rows(spec: SourceSpec, data: Mapping[str, Sequence[Any]], ctx: RowContext) -> list[PreferenceRow]:
    """Roleplay: preferred and dispreferred responses of a persona, and the persona's description."""
    out: list[PreferenceRow] = []
    cols = [data[c] for c in ("x", "yw", "yl", "level", "score_persona")]
    for i, (q, yw, yl, level, persona) in enumerate(zip(*cols)):
        row_id = f"{ctx.split}/{i}"
        if wrong_type(ctx, row_id, {"x": q, "yw": yw, "yl": yl}):
            continue
        user = _text(str(level)) if level is not None else ""
        q, yw, yl = _text(q), _text(yw), _text(yl)
        if not user:
            ctx.report.skip(EMPTY_TEXT, row_id)
            continue
        if not accept_pair(ctx, row_id, q, yw, yl):
            continue
        description = _text(persona.get("persona_description")) if isinstance(persona, Mapping) else ""
        if not description:
            ctx.report.skip("score_persona without persona_description", row_id)
            continue
        # Roleplay does not say whom the rejected response was written for; the episode builder picks another
        # persona's description for the rejected rationale.
        out.append(PreferenceRow(row_id, user, q, yw, yl, description, "", description))
    return out


PLAIN_USER: Final = "(no user)"
"""The one "user" of plain preference pairs."""

HH_ASSISTANT: Final = "\n\nAssistant:"


def plain_pair(ctx: RowContext, row_id: str, prompt: str, preferred: str, dispreferred: str, out: list[PreferenceRow]
               ) -> None:
    """Append a plain pair whose texts are kept byte for byte (the checks look at them stripped): empty texts and
    (unless ``keep_identical``) equal responses are skipped and counted."""
    if not (prompt.strip() and preferred.strip() and dispreferred.strip()):
        ctx.report.skip(EMPTY_TEXT, row_id)
    elif preferred == dispreferred and not ctx.keep_identical:
        ctx.report.skip("preferred equal to dispreferred (--keep-identical-pairs keeps them)", row_id)
    else:
        out.append(PreferenceRow(row_id, PLAIN_USER, prompt, preferred, dispreferred, "", ""))


def hh_prompt(dialogue: str) -> str | None:
    """The prompt of an Anthropic HH dialogue as the DPO code cuts it: everything up to and including the last
    "\n\nAssistant:" (``None`` when there is none)."""
    at = dialogue.rfind(HH_ASSISTANT)
    return None if at < 0 else dialogue[: at + len(HH_ASSISTANT)]


def hh_rows(spec: SourceSpec, data: Mapping[str, Sequence[Any]], ctx: RowContext) -> list[PreferenceRow]:
    """Anthropic HH: the prompt is cut from the chosen dialogue (:func:`hh_prompt`), the responses are the rest of
    each dialogue, texts kept byte for byte (the responses start with a space, as in the DPO code). A pair whose
    rejected dialogue does not start with that prompt is skipped and counted."""
    out: list[PreferenceRow] = []
    split = ctx.split
    for i, (chosen, rejected) in enumerate(zip(data["chosen"], data["rejected"])):
        if wrong_type(ctx, f"{split}/{i}", {"chosen": chosen, "rejected": rejected}):
            continue
        if not isinstance(chosen, str) or not isinstance(rejected, str):
            ctx.report.skip(EMPTY_TEXT, f"{split}/{i}")
            continue
        at = chosen.rfind(HH_ASSISTANT)  # hh_prompt, inlined: this loop runs 160k times for HH
        if at < 0:
            ctx.report.skip('no "\n\nAssistant:" in the chosen dialogue', f"{split}/{i}")
            continue
        cut = at + len(HH_ASSISTANT)
        if not rejected.startswith(chosen[:cut]):
            ctx.report.skip("chosen and rejected dialogues with different prompts", f"{split}/{i}")
            continue
        plain_pair(ctx, f"{split}/{i}", chosen[:cut], chosen[cut:], rejected[cut:], out)
    return out


def ultrafeedback_rows(spec: SourceSpec, data: Mapping[str, Sequence[Any]], ctx: RowContext) -> list[PreferenceRow]:
    """UltraFeedback binarized: ``chosen`` and ``rejected`` are message lists [user, assistant] of the same
    ``prompt``; the responses are the assistant messages. Conversations of more than one user turn are skipped and
    counted (not supported yet)."""
    out: list[PreferenceRow] = []
    for i, (prompt, chosen, rejected) in enumerate(zip(data["prompt"], data["chosen"], data["rejected"])):
        row_id = f"{ctx.split}/{i}"
        turns = []
        for messages in (chosen, rejected):
            ok = (isinstance(messages, list) and all(isinstance(m, Mapping) for m in messages)
                  and [m.get("role") for m in messages] == ["user", "assistant"])
            turns.append(messages if ok else None)
        if turns[0] is None or turns[1] is None:
            ctx.report.skip("chosen/rejected not one user and one assistant message", row_id)
            continue
        if turns[0][0].get("content") != turns[1][0].get("content"):
            ctx.report.skip("chosen and rejected answer different prompts", row_id)
            continue
        if wrong_type(ctx, row_id, {"prompt": prompt, "chosen's assistant content": turns[0][1].get("content"),
                                    "rejected's assistant content": turns[1][1].get("content")}):
            continue
        q, preferred, dispreferred = (_text(x) for x in (prompt, turns[0][1].get("content"), turns[1][1].get("content")))
        if accept_pair(ctx, row_id, q, preferred, dispreferred):
            out.append(PreferenceRow(row_id, PLAIN_USER, q, preferred, dispreferred, "", ""))
    return out


HUMAN: Final = "\n\nHuman:"


def dialogue_prompt(turns: Sequence[tuple[str, str]]) -> str:
    """A conversation in the Anthropic HH format the DPO code gives SHP and StackExchange prompts: each turn
    ``"\n\nHuman: <text>"`` or ``"\n\nAssistant: <text>"`` (role ``prompter``/``user`` or ``assistant``), ending with
    ``"\n\nAssistant:"`` for the reply. Responses then start with a space (``" " + text``), as in the DPO code."""
    parts = [f"{HH_ASSISTANT if role == 'assistant' else HUMAN} {text}" for role, text in turns]
    return "".join(parts) + HH_ASSISTANT


_TURN = re.compile(r"\n\n(Human|Assistant):")


def dialogue_messages(prompt: str) -> list[dict[str, str]] | None:
    """The messages of a prompt in the HH dialogue format (:func:`dialogue_prompt`; Anthropic HH's own prompts too):
    ``[{"role": "user", "content": ...}, {"role": "assistant", ...}, ...]`` without the final empty assistant turn,
    each text without the space after its marker; ``None`` for a prompt in another format. Chat templates render
    these as a real conversation."""
    if not prompt.startswith(HUMAN) or not prompt.endswith(HH_ASSISTANT):
        return None
    parts = _TURN.split(prompt[: -len(HH_ASSISTANT)])
    messages = []
    for speaker, text in zip(parts[1::2], parts[2::2]):
        messages.append({"role": "user" if speaker == "Human" else "assistant",
                         "content": text[1:] if text.startswith(" ") else text})
    return messages if messages and messages[-1]["role"] == "user" else None


def shp_rows(spec: SourceSpec, data: Mapping[str, Sequence[Any]], ctx: RowContext) -> list[PreferenceRow]:
    """Stanford SHP: one pair per row, as the DPO code reads it: prompt ``"\n\nHuman: " + history +
    "\n\nAssistant:"``, responses ``" " + human_ref_A/B``, A preferred when ``labels`` is 1; pairs whose score
    ratio (higher over lower) is below ``min_score_ratio`` (2 in the DPO code) are skipped and counted."""
    out: list[PreferenceRow] = []
    cols = [data[c] for c in ("history", "human_ref_A", "human_ref_B", "score_A", "score_B", "labels")]
    for i, (history, ref_a, ref_b, score_a, score_b, label) in enumerate(zip(*cols)):
        row_id = f"{ctx.split}/{i}"
        a, b = finite(ctx, i, "score_A", score_a), finite(ctx, i, "score_B", score_b)
        if label not in (0, 1) or isinstance(label, bool):
            ctx.report.skip("labels not 0 or 1", row_id)
        elif a is None or b is None or a <= 0 or b <= 0:
            ctx.report.skip("score_A/score_B not positive numbers", row_id)
        elif max(a / b, b / a) < ctx.min_score_ratio:
            ctx.report.skip(f"score ratio below {ctx.min_score_ratio:g} (--min-score-ratio)", row_id)
        elif wrong_type(ctx, row_id, {"history": history, "human_ref_A": ref_a, "human_ref_B": ref_b}):
            pass
        elif not all(isinstance(x, str) for x in (history, ref_a, ref_b)):
            ctx.report.skip(EMPTY_TEXT, row_id)
        else:
            chosen, rejected = (ref_a, ref_b) if label == 1 else (ref_b, ref_a)
            plain_pair(ctx, row_id, dialogue_prompt([("user", history)]), " " + chosen, " " + rejected, out)
    return out


class _Element:
    __slots__ = ("tag", "children")

    def __init__(self, tag: str | None) -> None:
        self.tag = tag
        self.children: list[_Element | str | _Comment] = []

    def text(self) -> str:
        """All text below, comments left out (BeautifulSoup's ``get_text()``)."""
        return "".join(c if isinstance(c, str) else c.text() for c in self.children if not isinstance(c, _Comment))

    def iter(self, tag: str) -> Iterator[_Element]:
        """Elements named ``tag`` below, in document order (``find_all``)."""
        for c in self.children:
            if isinstance(c, _Element):
                if c.tag == tag:
                    yield c
                yield from c.iter(tag)


class _Comment(NamedTuple):
    value: str


_VOID_TAGS: Final = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param",
                               "source", "track", "wbr", "basefont", "bgsound", "command", "frame", "image",
                               "isindex", "keygen", "menuitem", "nextid", "spacer"})


class _TreeBuilder(HTMLParser):
    """A minimal HTML tree as BeautifulSoup's ``html.parser`` builder makes it: tags nest as written (no implicit
    closing), void tags have no children, an unmatched end tag is ignored."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.root = _Element(None)
        self._open = [self.root]

    def handle_starttag(self, tag: str, attrs: list) -> None:
        element = _Element(tag)
        self._open[-1].children.append(element)
        if tag not in _VOID_TAGS:
            self._open.append(element)

    def handle_startendtag(self, tag: str, attrs: list) -> None:
        self._open[-1].children.append(_Element(tag))

    def handle_endtag(self, tag: str) -> None:
        for depth in range(len(self._open) - 1, 0, -1):
            if self._open[depth].tag == tag:
                del self._open[depth:]
                return

    def handle_data(self, data: str) -> None:
        self._open[-1].children.append(data)

    def handle_comment(self, data: str) -> None:
        self._open[-1].children.append(_Comment(data))

    def handle_entityref(self, name: str) -> None:
        code = name2codepoint.get(name)
        self.handle_data("&" + name if code is None else chr(code))  # an unknown entity loses its ";", as there

    def handle_charref(self, name: str) -> None:
        try:
            code = int(name[1:], 16) if name[:1] in "xX" else int(name)
            self.handle_data(chr(code))
        except (ValueError, OverflowError):
            self.handle_data(f"&#{name};")

    def unknown_decl(self, data: str) -> None:
        if data.startswith("CDATA["):
            self.handle_data(data[len("CDATA["):])


def strip_html(html: str) -> str:
    """StackExchange HTML to text as the DPO code does it (``strip_html_tags``): of the top-level elements, a
    ``<p>`` gives its own text (text inside its child tags, such as links, is dropped, as there), a ``<pre>`` gives
    each ``<code>`` in it as ``<code>text</code>``, a top-level ``<code>`` likewise; everything else is dropped; the
    pieces are joined with blank lines."""
    builder = _TreeBuilder()
    builder.feed(html)
    builder.close()
    pieces: list[str] = []
    for element in builder.root.children:
        if not isinstance(element, _Element):
            continue
        if element.tag == "p":
            pieces.append("".join(c if isinstance(c, str) else c.value for c in element.children
                                  if not isinstance(c, _Element)))
        elif element.tag == "pre":
            pieces.extend(f"<code>{code.text()}</code>" for code in element.iter("code"))
        elif element.tag == "code":
            pieces.append(f"<code>{element.text()}</code>")
    return "\n\n".join(pieces)


def stackexchange_rows(spec: SourceSpec, data: Mapping[str, Sequence[Any]], ctx: RowContext) -> list[PreferenceRow]:
    """StackExchange preferences (HuggingFaceH4/stack-exchange-preferences), as the DPO code pairs them: question and
    answers stripped of HTML (:func:`strip_html`), prompt ``"\n\nHuman: " + question + "\n\nAssistant:"``,
    responses ``" " + text``, every two answers of a question a pair with the higher ``pm_score`` preferred. Two
    answers with equal scores are skipped and counted (the DPO code keeps them, the later answer preferred)."""
    out: list[PreferenceRow] = []
    for i, (question, answers) in enumerate(zip(data["question"], data["answers"])):
        row_id = f"{ctx.split}/{i}"
        if not isinstance(question, str) or not isinstance(answers, list) or not all(
                isinstance(a, Mapping) and isinstance(a.get("text"), str)
                and finite(ctx, i, "pm_score", a.get("pm_score")) is not None for a in answers):
            ctx.report.skip("question not text or answers not a list of {text, pm_score}", row_id)
            continue
        if len(answers) < 2:
            ctx.report.skip("fewer than two answers", row_id)
            continue
        prompt = dialogue_prompt([("user", strip_html(question))])
        texts = [" " + strip_html(a["text"]) for a in answers]
        scores = [finite(ctx, i, "pm_score", a["pm_score"]) for a in answers]
        for j in range(len(answers)):
            for k in range(j + 1, len(answers)):
                pair_id = f"{row_id}/{j}-{k}"
                if scores[j] == scores[k]:
                    ctx.report.skip("two answers with equal pm_score", pair_id)
                    continue
                best, worst = (j, k) if scores[j] > scores[k] else (k, j)  # type: ignore[operator]
                plain_pair(ctx, pair_id, prompt, texts[best], texts[worst], out)
    return out


def oasst2_rows(spec: SourceSpec, data: Mapping[str, Sequence[Any]], ctx: RowContext) -> list[PreferenceRow]:
    """OpenAssistant2 message trees: the ranked assistant replies to one message (``rank`` 0 is the best) become
    pairs, every two replies of different rank, the better one preferred; the prompt is the conversation from the
    tree's root to that message (:func:`dialogue_prompt`), the responses ``" " + text``. Deleted messages are left
    out; replies whose conversation cannot be followed to its root in the same split are skipped and counted."""
    out: list[PreferenceRow] = []
    cols = [data[c] for c in ("message_id", "parent_id", "role", "text", "rank")]
    deleted = data.get("deleted") or [False] * len(cols[0])
    messages: dict[str, tuple[str | None, str, str]] = {}
    replies: dict[str, list[tuple[float, int, str]]] = {}
    for i, (mid, parent, role, text, rank, gone) in enumerate(zip(*cols, deleted)):
        if gone is True:
            ctx.report.skip("deleted message", f"{ctx.split}/{i}")
            continue
        if not isinstance(mid, str) or role not in ("prompter", "assistant") or not isinstance(text, str):
            ctx.report.skip("message without message_id, role prompter/assistant or text", f"{ctx.split}/{i}")
            continue
        messages[mid] = (parent if isinstance(parent, str) else None, role, text)
        if role == "assistant" and isinstance(parent, str) and finite(ctx, i, "rank", rank) is not None:
            replies.setdefault(parent, []).append((float(rank), i, text))
    for parent, ranked in replies.items():
        turns: list[tuple[str, str]] = []
        at: str | None = parent
        while at is not None and at in messages and len(turns) <= len(messages):
            up, role, text = messages[at]
            turns.append((role, text))
            at = up
        if at is not None or not turns or turns[-1][0] != "prompter":
            for _, i, _ in ranked:
                ctx.report.skip("a reply whose conversation does not reach its root prompt", f"{ctx.split}/{i}")
            continue
        prompt = dialogue_prompt(turns[::-1])
        ranked.sort()
        for j in range(len(ranked)):
            for k in range(j + 1, len(ranked)):
                (rank_j, i_j, text_j), (rank_k, i_k, text_k) = ranked[j], ranked[k]
                pair_id = f"{ctx.split}/{i_j}-{i_k}"
                if rank_j == rank_k:
                    ctx.report.skip("two replies of equal rank", pair_id)
                    continue
                plain_pair(ctx, pair_id, prompt, " " + text_j, " " + text_k, out)
    return out


register_source(SourceSpec("elix", "Asap7772/elix_generations_gpt4omini_pref", _PAIRWISE_COLUMNS, 4,
                           scored_pair_rows, elix_description))
register_source(SourceSpec("review", "Asap7772/steered_reviews_full_autolabel_gpt4o_pref", _PAIRWISE_COLUMNS, 8,
                           scored_pair_rows, review_description, attributes=review_attributes))
register_source(SourceSpec(
    "roleplay",
    "sher222/persona-iterative-responses",
    {
        "x": "the question",
        "yw": "preferred response",
        "yl": "dispreferred response",
        "level": "persona id (the user)",
        "score_persona": "struct with persona_description",
    },
    8,
    persona_rows,
))
register_source(SourceSpec("hh", "Anthropic/hh-rlhf",
                           {"chosen": "dialogue ending with the preferred assistant turn",
                            "rejected": "the same dialogue ending with the dispreferred one"},
                           0, hh_rows, plain=True))
register_source(SourceSpec("ultrafeedback", "HuggingFaceH4/ultrafeedback_binarized",
                           {"prompt": "the user's prompt", "chosen": "messages [user, preferred assistant]",
                            "rejected": "messages [user, dispreferred assistant]"},
                           0, ultrafeedback_rows, plain=True, hub_splits=("train_prefs", "test_prefs")))
register_source(SourceSpec("shp", "stanfordnlp/SHP",
                           {"history": "the post (question)", "human_ref_A": "comment A", "human_ref_B": "comment B",
                            "score_A": "comment A's score", "score_B": "comment B's score",
                            "labels": "1 if comment A is preferred, 0 if B is"},
                           0, shp_rows, plain=True))
register_source(SourceSpec("stackexchange", "HuggingFaceH4/stack-exchange-preferences",
                           {"question": "the question (HTML)",
                            "answers": "list of {text (HTML), pm_score (higher is better)}"},
                           0, stackexchange_rows, plain=True, test_fraction=0.01))
register_source(SourceSpec("oasst2", "OpenAssistant/oasst2",
                           {"message_id": "the message's id", "parent_id": "the id of the message it replies to "
                            "(null for a tree's root prompt)", "role": "prompter or assistant",
                            "text": "the message", "rank": "rank among its siblings, 0 the best (null: unranked)"},
                           0, oasst2_rows, plain=True))


# ---- reading -------------------------------------------------------------------------------------------------

_FILE_FORMATS = {".parquet": "parquet", ".jsonl": "json", ".json": "json"}


def split_name(name: str) -> str:
    """A source split's name as train / validation / valid / test: ``train-00000-of-00001`` and ``test_prefs``
    (files or hub splits) -> ``train`` / ``test``; anything else -> ``train``."""
    stem = name.split(".")[0].lower()
    for split in ("train", "validation", "valid", "test"):
        if stem == split or stem.startswith(split + "-") or stem.startswith(split + "_"):
            return split
    return "train"


def _json_error(path: Path, ex: json.JSONDecodeError, lineno: int | None = None) -> SourceSchemaError:
    where = f"{path}, line {lineno if lineno is not None else ex.lineno}, column {ex.colno}"
    return SourceSchemaError(f"{where}: not valid JSON ({ex.msg}).")


def _decode(path: Path, data: bytes, lineno: int | None = None) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as ex:
        if lineno is None:  # a whole file: say on which line the bad byte is
            lineno = data.count(b"\n", 0, ex.start) + 1
            column = ex.start - (data.rfind(b"\n", 0, ex.start) + 1) + 1
        else:
            column = ex.start + 1
        raise SourceSchemaError(
            f"{path}, line {lineno}, byte {column}: not UTF-8 text ({ex.reason}); save the file as UTF-8."
        ) from None


def _read_json(path: Path) -> tuple[list[Any], list[int] | None]:
    """The records of a JSON array file or of a JSONL file (one object per line), errors named by line; and the line
    of each record of a JSONL file (None for an array)."""
    with path.open("rb") as fp:
        head = fp.read(4096).lstrip()
        fp.seek(0)
        if head.startswith(b"["):
            try:
                return json.loads(_decode(path, fp.read())), None
            except json.JSONDecodeError as ex:
                raise _json_error(path, ex) from None
        records, lines = [], []
        for lineno, raw in enumerate(fp, 1):
            line = _decode(path, raw, lineno).rstrip("\r\n")
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as ex:
                    raise _json_error(path, ex, lineno) from None
                lines.append(lineno)
        return records, lines


def _read_file(path: Path) -> tuple[dict[str, list[Any]], list[int] | None]:
    """The columns (name -> values) of one parquet / JSON / JSONL file, and the line of each row of a JSONL file;
    every error names the file."""
    fmt = _FILE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise SourceSchemaError(f"{path}: unsupported file type '{path.suffix}'; use .parquet, .jsonl or .json.")
    if path.stat().st_size == 0:
        raise SourceSchemaError(f"{path}: the file is empty (expected rows in the source schema).")
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            columns = pq.read_table(path).to_pydict()
        except (pa.ArrowException, OSError) as ex:
            raise SourceSchemaError(f"{path}: not a readable parquet file ({ex}).") from None
        if not columns or not len(next(iter(columns.values()))):
            raise SourceSchemaError(f"{path}: the file has no rows.")
        return columns, None
    records, lines = _read_json(path)
    if not records:
        raise SourceSchemaError(f"{path}: the file has no records (only blank lines).")
    bad = next((i for i, r in enumerate(records) if not isinstance(r, dict)), None)
    if bad is not None:
        raise SourceSchemaError(f"{path}: record {bad + 1} is not a JSON object; every record must be one.")
    keys: dict[str, None] = {}
    for r in records:
        keys.update(dict.fromkeys(r))
    return {k: [r.get(k) for r in records] for k in keys}, lines


def read_source(
    spec: SourceSpec, inputs: Sequence[str], report: ReadReport, *, cache_dir: str | None = None,
    keep_identical: bool = False, min_score_ratio: float = 2.0,
) -> dict[str, list[PreferenceRow]]:
    """Read ``inputs`` (local files or directories, or one hub name) into rows per source split.

    A local file's split is taken from its name (``train*``, ``test*``; others are ``train``); a directory contributes
    every parquet/JSON/JSONL file below it. Anything that is not an existing path is taken as a hub name and loaded
    with Hugging Face ``datasets`` (network needed).
    """
    by_split: dict[str, list[PreferenceRow]] = {}
    local = [Path(i) for i in inputs if Path(i).exists()]
    remote = [i for i in inputs if not Path(i).exists()]

    files: list[Path] = []
    for path in local:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in _FILE_FORMATS))
        else:
            files.append(path)
    if local and not files:
        raise SourceSchemaError(f"{', '.join(map(str, local))}: no .parquet, .jsonl or .json file found.")

    for path in files:
        columns, lines = _read_file(path)
        rows = rows_from_columns(spec, path.name, columns, report, str(path), keep_identical=keep_identical,
                                 min_score_ratio=min_score_ratio, lines=lines)
        by_split.setdefault(split_name(path.name), []).extend(rows)

    for name in remote:
        for split, data in _load_hub(name, cache_dir).items():
            if spec.hub_splits is not None and split not in spec.hub_splits:
                continue
            rows = rows_from_columns(spec, split, data, report, f"{name} [{split}]", keep_identical=keep_identical,
                                     min_score_ratio=min_score_ratio)
            by_split.setdefault(split_name(split), []).extend(rows)
    return by_split


def _load_hub(name: str, cache_dir: str | None) -> dict[str, dict[str, list[Any]]]:
    try:
        import datasets
    except ImportError as ex:
        raise SourceSchemaError(
            f"'{name}' is not a local path, and reading a hub data set needs Hugging Face `datasets`: "
            "pip install -e '.[data]'."
        ) from ex
    try:
        dd = datasets.load_dataset(name, cache_dir=cache_dir)
    except Exception as ex:  # noqa: BLE001 (datasets raises many types; the user needs the name and the cause)
        raise SourceSchemaError(
            f"'{name}' is not a local file or directory, and loading it from the Hugging Face hub failed: {ex}"
        ) from ex
    return {split: ds.to_dict() for split, ds in dd.items()}
