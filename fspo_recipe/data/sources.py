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
from typing import Any, NamedTuple


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


@dataclass
class ReadReport:
    """What a source skipped, by reason, with counts. Nothing is skipped silently."""

    rows_read: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, reason: str, row_id: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < 3:
            shown.append(row_id)

    def lines(self) -> list[str]:
        return [
            f"skipped {count} row(s): {reason} (e.g. {', '.join(self.examples[reason])})"
            for reason, count in sorted(self.skipped.items())
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
class SourceSpec:
    """The schema of one source and how to turn its columns into rows."""

    name: str
    hub_name: str
    columns: Mapping[str, str]
    """Required column -> what it holds (shown in schema errors)."""

    default_shots: int
    kind: str
    """``pairwise`` (prompt, response_x, response_y, label) or ``persona`` (x, yw, yl)."""

    describe: Callable[[str], str] = elix_description

    def schema_text(self) -> str:
        return ", ".join(f"{c} ({what})" for c, what in self.columns.items())


_PAIRWISE_COLUMNS = {
    "prompt": "the question",
    "response_x": "first response",
    "response_y": "second response",
    "level_x": "user response_x was written for",
    "level_y": "user response_y was written for",
    "scorer_level": "the user who judged the pair",
    "label": "0 if response_x is preferred, 1 if response_y is",
}

SOURCES: dict[str, SourceSpec] = {
    "elix": SourceSpec("elix", "Asap7772/elix_generations_gpt4omini_pref", _PAIRWISE_COLUMNS, 4, "pairwise",
                       elix_description),
    "review": SourceSpec("review", "Asap7772/steered_reviews_full_autolabel_gpt4o_pref", _PAIRWISE_COLUMNS, 8,
                         "pairwise", review_description),
    "roleplay": SourceSpec(
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
        "persona",
    ),
}


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
    spec: SourceSpec, split: str, data: Mapping[str, Sequence[Any]], report: ReadReport, where: str
) -> list[PreferenceRow]:
    """Turn one split's columns (name -> list of values) into rows; bad rows are counted in ``report``."""
    _check_columns(spec, data.keys(), where)
    n = len(next(iter(data.values()))) if data else 0
    report.rows_read += n
    out: list[PreferenceRow] = []
    append = out.append

    if spec.kind == "pairwise":
        describe = spec.describe
        cols = [data[c] for c in ("prompt", "response_x", "response_y", "level_x", "level_y", "scorer_level", "label")]
        for i, (q, rx, ry, lx, ly, user, label) in enumerate(zip(*cols)):
            row_id = f"{split}/{i}"
            if label not in (0, 1) or isinstance(label, bool):
                report.skip("label not 0 or 1", row_id)
                continue
            q, rx, ry, user = _text(q), _text(rx), _text(ry), _text(user)
            if not (q and rx and ry and user):
                report.skip("empty question, response or user", row_id)
                continue
            lx, ly = _text(lx), _text(ly)
            if label == 0:
                append(PreferenceRow(row_id, user, q, rx, ry, describe(lx or user), describe(ly or user)))
            else:
                append(PreferenceRow(row_id, user, q, ry, rx, describe(ly or user), describe(lx or user)))
        return out

    cols = [data[c] for c in ("x", "yw", "yl", "level", "score_persona")]
    for i, (q, yw, yl, level, persona) in enumerate(zip(*cols)):
        row_id = f"{split}/{i}"
        user = _text(str(level)) if level is not None else ""
        q, yw, yl = _text(q), _text(yw), _text(yl)
        if not (q and yw and yl and user):
            report.skip("empty question, response or user", row_id)
            continue
        description = ""
        if isinstance(persona, Mapping):
            description = _text(persona.get("persona_description"))
        if not description:
            report.skip("score_persona without persona_description", row_id)
            continue
        # Roleplay does not say whom the rejected response was written for; the episode builder picks another
        # persona's description for the rejected rationale.
        append(PreferenceRow(row_id, user, q, yw, yl, description, ""))
    return out


# ---- reading -------------------------------------------------------------------------------------------------

_FILE_FORMATS = {".parquet": "parquet", ".jsonl": "json", ".json": "json"}


def _split_of_file(path: Path) -> str:
    """``train-00000-of-00001.parquet`` and ``test.jsonl`` -> ``train`` / ``test``; anything else -> ``train``."""
    stem = path.name.split(".")[0].lower()
    for split in ("train", "validation", "valid", "test"):
        if stem == split or stem.startswith(split + "-") or stem.startswith(split + "_"):
            return split
    return "train"


def _read_file(path: Path) -> dict[str, list[Any]]:
    fmt = _FILE_FORMATS.get(path.suffix.lower())
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pydict()
    if fmt == "json":
        with path.open(encoding="utf-8") as fp:
            head = fp.read(1)
            while head and head.isspace():
                head = fp.read(1)
            fp.seek(0)
            if head == "[":
                try:
                    records = json.load(fp)
                except json.JSONDecodeError as ex:
                    raise SourceSchemaError(f"{path}: not valid JSON ({ex}).") from ex
            else:
                records = []
                for lineno, line in enumerate(fp, 1):
                    if line.strip():
                        try:
                            records.append(json.loads(line))
                        except json.JSONDecodeError as ex:
                            raise SourceSchemaError(f"{path}, line {lineno}: not valid JSON ({ex.msg}).") from ex
        if not all(isinstance(r, dict) for r in records):
            raise SourceSchemaError(f"{path}: every record must be a JSON object.")
        keys: dict[str, None] = {}
        for r in records:
            keys.update(dict.fromkeys(r))
        return {k: [r.get(k) for r in records] for k in keys}
    raise SourceSchemaError(f"{path}: unsupported file type '{path.suffix}'; use .parquet, .jsonl or .json.")


def read_source(
    spec: SourceSpec, inputs: Sequence[str], report: ReadReport, *, cache_dir: str | None = None
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
        rows = rows_from_columns(spec, path.name, _read_file(path), report, str(path))
        by_split.setdefault(_split_of_file(path), []).extend(rows)

    for name in remote:
        for split, data in _load_hub(name, cache_dir).items():
            by_split.setdefault(split, []).extend(rows_from_columns(spec, split, data, report, f"{name} [{split}]"))
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
