"""What every source shares: the row type, the report of skipped rows, the spec a source registers, its options,
and the checks every row mapping applies. No torch, no fairseq2."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

from fspo_recipe.data.sources.dialogue import dialogue_turns


SOURCE_SPLITS: Final = {"train": "train", "validation": "valid", "valid": "valid", "test": "test"}
"""A source split's name -> the prepared split it feeds (any other name feeds train)."""


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

    turns: tuple[tuple[str, str], ...] = ()
    """Plain sources built from conversations: the prompt's turns ((role, text), roles ``user``/``assistant``),
    written as the example's ``messages`` field; empty for a prompt that is one text."""


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


@dataclass(frozen=True)
class SourceOption:
    """A command-line option that one source (or kind of source) declares for itself."""

    flag: str
    """``--min-score-ratio``; its value's key is the flag without dashes, ``-`` as ``_``."""

    parse: Callable[[str], Any]
    """Turns the command-line text into the value (raises ``argparse.ArgumentTypeError`` with what is expected)."""

    default: Any
    help: str

    @property
    def key(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


def at_least(minimum: int) -> Callable[[str], int]:
    """An option type: a whole number >= ``minimum``."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got '{value}'") from None
        if number < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {number}")
        return number

    return parse


def number_option(accept: Callable[[float], bool], must: str, kind: str = "a number") -> Callable[[str], float]:
    """An option type: a finite number for which ``accept`` holds ("must be ``must``" otherwise)."""

    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind}, got '{value}'") from None
        if not (math.isfinite(number) and accept(number)):
            raise argparse.ArgumentTypeError(f"must be {must}, got {value}")
        return number

    return parse


def one_of(*choices: str) -> Callable[[str], str]:
    """An option type: one of ``choices``."""

    def parse(value: str) -> str:
        if value not in choices:
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(choices)}, got '{value}'")
        return value

    return parse


positive = number_option(lambda x: x > 0, "a finite number > 0")
fraction = number_option(lambda x: 0.0 <= x < 1.0, "in [0, 1)", "a fraction in [0, 1)")


def option_values(spec: SourceSpec, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The value of each of ``spec``'s options: ``given`` (by key) where there, else the default; a key ``spec``
    does not declare is an error."""
    given = dict(given or {})
    unknown = sorted(set(given) - {o.key for o in spec.options})
    if unknown:
        raise ValueError(f"{spec.name} has no option {', '.join(unknown)}; its options: "
                         f"{', '.join(o.key for o in spec.options) or 'none'}.")
    return {o.key: given.get(o.key, o.default) for o in spec.options}


@dataclass(frozen=True)
class RowContext:
    """What a source's row mapping needs besides the columns: where the rows come from and what to report."""

    split: str
    """The source split (or file name) the rows come from; row ids are ``<split>/<index>``."""

    report: ReadReport
    """Skipped and flagged rows are counted here."""

    keep_identical: bool = False
    """Keep pairs whose preferred and dispreferred responses are equal (skipped and counted by default)."""

    where: str = ""
    """The file (or hub data set and split) the rows come from, for errors."""

    lines: Sequence[int] | None = None
    """The line of each row in a JSON Lines file (None for other formats: rows are counted from 1)."""

    options: Mapping[str, Any] = field(default_factory=dict)
    """The values of the source's own options (:attr:`SourceSpec.options`), by key."""

    def locate(self, index: int) -> str:
        """Where row ``index`` is: ``FILE, line N`` (JSON Lines) or ``FILE, row N``."""
        if self.lines is not None and index < len(self.lines):
            return f"{self.where}, line {self.lines[index]}"
        return f"{self.where}, row {index + 1}"


RowMapping = Callable[["SourceSpec", Mapping[str, Sequence[Any]], RowContext], list[PreferenceRow]]


@dataclass(frozen=True)
class SourceSpec:
    """One data source: its name, exact schema, and how its columns become :class:`PreferenceRow`.

    Adding a source means one module in this package: its columns, options and row mapping, and a call of
    :func:`register_source` with its spec; nothing else (reading, splits, episodes, writing) changes.
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

    options: tuple[SourceOption, ...] = ()
    """Command-line options of this source (``fspo-prepare NAME --help`` lists them); their values reach the row
    mapping as ``ctx.options`` and :attr:`after_reading` as its ``options``, and are recorded in the summary."""

    default_split_mode: str = "source"
    """``--split-mode`` when none is given: ``source`` (the data set's own splits) where those hold other users or
    other questions apart; ``heldout_users`` where the source's splits share the same users (simulated populations),
    so that by default a personalization data set is tested on users never trained on."""

    after_reading: Callable[[dict[str, list[PreferenceRow]], Mapping[str, Any], ReadReport, int],
                            dict[str, list[PreferenceRow]]] | None = None
    """What the source does to its rows once read, by split: (rows, option values, report, seed) -> rows (plain
    sources: at most N pairs of a prompt, a test split of held-out prompts when the source has none)."""

    hub_splits: tuple[str, ...] | None = None
    """The hub data set's splits to read (UltraFeedback: ``train_prefs``, ``test_prefs``; its ``*_sft`` and
    ``*_gen`` splits repeat the prompts for other uses); None: all."""

    hub_config: str | None = None
    """The hub data set's configuration holding the rows (PRISM: ``conversations``); None: its default."""

    file_pattern: str | None = None
    """The files of a local directory that hold the rows (a glob on the file name; PRISM: ``conversations*``, its
    directory also holds the survey, utterances and metadata); None: every parquet/JSON/JSONL file."""

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


def text(value: Any) -> str:
    """A stripped text value; anything else (None, a number) as empty."""
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
    keep_identical: bool = False, lines: Sequence[int] | None = None, options: Mapping[str, Any] | None = None,
) -> list[PreferenceRow]:
    """Turn one split's columns (name -> list of values) into rows; bad rows are counted in ``report``. ``lines``:
    the line of each row in a JSON Lines file, for errors; ``options``: the source's option values."""
    _check_columns(spec, data.keys(), where)
    report.rows_read += len(next(iter(data.values()))) if data else 0
    return spec.to_rows(spec, data, RowContext(split, report, keep_identical, where, lines,
                                               option_values(spec, options)))


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


PLAIN_USER: Final = "(no user)"
"""The one "user" of plain preference pairs."""


def plain_pair(ctx: RowContext, row_id: str, prompt: str, preferred: str, dispreferred: str, out: list[PreferenceRow],
               turns: Sequence[tuple[str, str]] = ()) -> None:
    """Append a plain pair whose texts are kept byte for byte (the checks look at them stripped): empty texts and
    (unless ``keep_identical``) equal responses are skipped and counted. ``turns``: the conversation ``prompt``
    renders (:func:`fspo_recipe.data.sources.dialogue.dialogue_prompt`), kept as the row's structure."""
    if not (prompt.strip() and preferred.strip() and dispreferred.strip()):
        ctx.report.skip(EMPTY_TEXT, row_id)
    elif preferred == dispreferred and not ctx.keep_identical:
        ctx.report.skip("preferred equal to dispreferred (--keep-identical-pairs keeps them)", row_id)
    else:
        out.append(PreferenceRow(row_id, PLAIN_USER, prompt, preferred, dispreferred, "", "",
                                 turns=dialogue_turns(turns)))
