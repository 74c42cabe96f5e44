"""The three FSPO sources, their exact schemas, and how their rows become :class:`PreferenceRow`.

A source is read from a Hugging Face hub name (``Asap7772/elix_generations_gpt4omini_pref``), a local directory, or
local parquet / JSON / JSONL files; a user's own data in one of these schemas works the same way. Nothing here
imports torch or fairseq2.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
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
    """Plain preference pairs without users (Anthropic HH, UltraFeedback): each row becomes one example in
    fairseq2's generic fields (``src`` = the prompt as in the source, ``tgt_chosen``, ``tgt_rejected``), no episodes."""

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
    keep_identical: bool = False,
) -> list[PreferenceRow]:
    """Turn one split's columns (name -> list of values) into rows; bad rows are counted in ``report``."""
    _check_columns(spec, data.keys(), where)
    report.rows_read += len(next(iter(data.values()))) if data else 0
    return spec.to_rows(spec, data, RowContext(split, report, keep_identical))


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
        row_id = f"{split}/{i}"
        prompt, preferred, dispreferred = chosen[:cut], chosen[cut:], rejected[cut:]
        if not preferred.strip() or not dispreferred.strip():
            ctx.report.skip(EMPTY_TEXT, row_id)
            continue
        if preferred == dispreferred and not ctx.keep_identical:
            ctx.report.skip("preferred equal to dispreferred (--keep-identical-pairs keeps them)", row_id)
            continue
        out.append(PreferenceRow(row_id, PLAIN_USER, prompt, preferred, dispreferred, "", ""))
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
        q, preferred, dispreferred = (_text(x) for x in (prompt, turns[0][1].get("content"), turns[1][1].get("content")))
        if accept_pair(ctx, row_id, q, preferred, dispreferred):
            out.append(PreferenceRow(row_id, PLAIN_USER, q, preferred, dispreferred, "", ""))
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
                           0, ultrafeedback_rows, plain=True))


# ---- reading -------------------------------------------------------------------------------------------------

_FILE_FORMATS = {".parquet": "parquet", ".jsonl": "json", ".json": "json"}


def _split_of_file(path: Path) -> str:
    """``train-00000-of-00001.parquet`` and ``test.jsonl`` -> ``train`` / ``test``; anything else -> ``train``."""
    stem = path.name.split(".")[0].lower()
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


def _read_json(path: Path) -> list[Any]:
    """The records of a JSON array file or of a JSONL file (one object per line), errors named by line."""
    with path.open("rb") as fp:
        head = fp.read(4096).lstrip()
        fp.seek(0)
        if head.startswith(b"["):
            try:
                return json.loads(_decode(path, fp.read()))
            except json.JSONDecodeError as ex:
                raise _json_error(path, ex) from None
        records = []
        for lineno, raw in enumerate(fp, 1):
            line = _decode(path, raw, lineno).rstrip("\r\n")
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as ex:
                    raise _json_error(path, ex, lineno) from None
        return records


def _read_file(path: Path) -> dict[str, list[Any]]:
    """The columns (name -> values) of one parquet / JSON / JSONL file; every error names the file."""
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
        return columns
    records = _read_json(path)
    if not records:
        raise SourceSchemaError(f"{path}: the file has no records (only blank lines).")
    bad = next((i for i, r in enumerate(records) if not isinstance(r, dict)), None)
    if bad is not None:
        raise SourceSchemaError(f"{path}: record {bad + 1} is not a JSON object; every record must be one.")
    keys: dict[str, None] = {}
    for r in records:
        keys.update(dict.fromkeys(r))
    return {k: [r.get(k) for r in records] for k in keys}


def read_source(
    spec: SourceSpec, inputs: Sequence[str], report: ReadReport, *, cache_dir: str | None = None,
    keep_identical: bool = False,
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
        rows = rows_from_columns(spec, path.name, _read_file(path), report, str(path), keep_identical=keep_identical)
        by_split.setdefault(_split_of_file(path), []).extend(rows)

    for name in remote:
        for split, data in _load_hub(name, cache_dir).items():
            rows = rows_from_columns(spec, split, data, report, f"{name} [{split}]", keep_identical=keep_identical)
            by_split.setdefault(split, []).extend(rows)
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
