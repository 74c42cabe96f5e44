"""PRISM (Kirk et al., NeurIPS 2024 datasets track; ``HannahRoseKirk/prism-alignment``): real participants rating the
responses of 21 language models in their own conversations, and their own descriptions from a survey.

One user is one participant (``user_id``). In every turn of a conversation the participant rated each model response
shown (``score``, 1 to 100: four responses in the opening turn, two in each later one); every two responses of a turn
with different ratings make a pair, the higher-rated one preferred. Ties and responses without a rating are skipped and
counted; ``--min-rating-gap N`` also skips pairs rated closer than N. The question is the conversation so far: the
participant's messages and the response they chose in each earlier turn (``if_chosen``), then this turn's message,
written as a transcript (``User: ...`` / ``Assistant: ...``) when there are earlier turns; the FSPO template holds one
question, so the chat template (``chat_template``) wraps the whole episode, not the turns one by one. The user's
description (the rationale target, ``--rationale``) comes from the survey: ``self_description`` (the participant's
values and beliefs, in their words), ``system_string`` (the instructions they would give a model), or both
(``--description``).

The survey is read from ``survey.jsonl`` beside the conversations file (``--survey FILE`` names another), or, for the
hub data set, from its ``survey`` configuration. A directory given as ``--input`` contributes its ``conversations*``
files only (it also holds the survey, utterances and metadata files).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from fspo_recipe.data.sources.base import (PreferenceRow, RowContext, SourceOption, SourceSchemaError, SourceSpec,
                                           accept_pair, at_least, finite, one_of, register_source, text)
from fspo_recipe.data.sources.reading import load_hub, read_json_records

HUB_NAME: Final = "HannahRoseKirk/prism-alignment"

SURVEY_COLUMNS: Final = {"user_id": "the participant", "self_description": "their values and beliefs, in their words",
                         "system_string": "the instructions they would give a language model"}

DESCRIPTIONS: Final = ("both", "self_description", "system_string")

_surveys: dict[str, dict[str, dict[str, str]]] = {}


def read_survey(where: str) -> dict[str, dict[str, str]]:
    """user_id -> {self_description, system_string} of a survey file (JSONL or JSON array) or of the hub data set's
    ``survey`` configuration; read once per process."""
    if where in _surveys:
        return _surveys[where]
    path = Path(where)
    rows: list[tuple[str, Any]] = []
    if path.is_file():
        records, lines = read_json_records(path)
        rows = [(f"{path}, line {lines[i]}" if lines else f"{path}, record {i + 1}", r) for i, r in enumerate(records)]
    else:
        columns = load_hub(where, None, "survey").get("train", {})
        rows = [(f"{where} [survey], row {i}", dict(zip(columns, values)))
                for i, values in enumerate(zip(*columns.values()), 1)]
    survey: dict[str, dict[str, str]] = {}
    for at, row in rows:
        missing = [c for c in SURVEY_COLUMNS if not isinstance(row, dict) or c not in row]
        if missing:
            raise SourceSchemaError(f"{at}: missing field(s) {', '.join(map(repr, missing))} of the PRISM survey "
                                    f"({', '.join(f'{c}: {w}' for c, w in SURVEY_COLUMNS.items())}).")
        survey[str(row["user_id"])] = {k: text(row.get(k)) for k in ("self_description", "system_string")}
    _surveys[where] = survey
    return survey


def survey_location(ctx: RowContext) -> str:
    """Where the survey of the conversations being read is: ``--survey``, else ``survey.jsonl`` beside the file,
    else (the hub) the hub data set."""
    given = ctx.options.get("survey")
    if given:
        if not Path(given).is_file():
            raise SourceSchemaError(f"--survey {given}: no such file.")
        return str(given)
    where = Path(ctx.where)
    if where.is_file():
        beside = where.with_name("survey.jsonl")
        if not beside.is_file():
            raise SourceSchemaError(f"{beside}: the PRISM survey is not beside {where.name} (the users' descriptions "
                                    "come from it); give it with --survey FILE.")
        return str(beside)
    return ctx.where.split(" [", 1)[0]  # "NAME [split]": the hub data set


def user_description(entry: Mapping[str, str], which: str) -> str:
    values = entry.get("self_description", ""), entry.get("system_string", "")
    if which == "self_description":
        return values[0]
    if which == "system_string":
        return values[1]
    parts = [f"In their words, the user values: {values[0]}" if values[0] else "",
             f"They ask a language model to: {values[1]}" if values[1] else ""]
    return "\n".join(p for p in parts if p)


def transcript(turns: Sequence[tuple[str, str]]) -> str:
    """The conversation so far as one question: the message alone, or ``User: ...`` / ``Assistant: ...`` lines."""
    if len(turns) == 1:
        return turns[0][1]
    return "\n\n".join(f"{'User' if role == 'user' else 'Assistant'}: {content}" for role, content in turns)


def prism_rows(spec: SourceSpec, data: Mapping[str, Sequence[Any]], ctx: RowContext) -> list[PreferenceRow]:
    """Rated responses of each conversation turn -> pairs of the participant (see the module docstring)."""
    survey = read_survey(survey_location(ctx))
    gap, which = ctx.options.get("min_rating_gap", 1), ctx.options.get("description", "both")
    out: list[PreferenceRow] = []
    for i, (cid, uid, history) in enumerate(zip(data["conversation_id"], data["user_id"],
                                                data["conversation_history"])):
        conversation = f"{ctx.split}/{cid if isinstance(cid, str) else i}"
        if not isinstance(uid, str) or not isinstance(history, list):
            ctx.report.skip("conversation without user_id or conversation_history list", ctx.locate(i))
            continue
        if uid not in survey:
            ctx.report.skip("participant missing from the survey", conversation)
            continue
        description = user_description(survey[uid], which)
        if not description:
            ctx.report.skip("participant without a self-description in the survey", conversation)
            continue
        by_turn: dict[int, dict[str, Any]] = {}
        for item in history:
            if not isinstance(item, dict) or not isinstance(item.get("turn"), int):
                ctx.report.skip("history entry without a turn number", conversation)
                continue
            turn = by_turn.setdefault(item["turn"], {"user": None, "model": []})
            if item.get("role") == "user":
                turn["user"] = text(item.get("content"))
            elif item.get("role") == "model":
                turn["model"].append(item)
        so_far: list[tuple[str, str]] = []
        for number in sorted(by_turn):
            turn = by_turn[number]
            if not turn["user"]:
                ctx.report.skip("turn without the participant's message (later turns dropped)", conversation)
                break
            so_far.append(("user", turn["user"]))
            question = transcript(so_far)
            rated = []
            for response in turn["model"]:
                raw, content = response.get("score"), text(response.get("content"))
                # A NaN or infinite rating is an error naming the line (finite); text or a list is counted as that.
                score = finite(ctx, i, f"the score of a response in turn {number}", raw)
                if raw is None:
                    ctx.report.skip("response without a rating", f"{conversation}/{number}")
                elif score is None:
                    ctx.report.skip(f"rating that is {type(raw).__name__}, not a number", f"{conversation}/{number}")
                elif content:
                    rated.append((score, response.get("within_turn_id"), content))
            for a in range(len(rated)):
                for b in range(a + 1, len(rated)):
                    (sa, wa, ta), (sb, wb, tb) = rated[a], rated[b]
                    pair_id = f"{conversation}/{number}/{wa}-{wb}"
                    if sa == sb:
                        ctx.report.skip("equal ratings (a tie)", pair_id)
                    elif abs(sa - sb) < gap:
                        ctx.report.skip("ratings closer than --min-rating-gap", pair_id)
                    else:
                        preferred, rejected = (ta, tb) if sa > sb else (tb, ta)
                        if accept_pair(ctx, pair_id, question, preferred, rejected):
                            out.append(PreferenceRow(pair_id, uid, question, preferred, rejected, description, "",
                                                     description))
            chosen = [text(r.get("content")) for r in turn["model"] if r.get("if_chosen") is True]
            if not chosen or not chosen[0]:
                if any(n > number for n in by_turn):
                    ctx.report.skip("turn without a chosen response (later turns dropped)", conversation)
                break
            so_far.append(("assistant", chosen[0]))
    return out


register_source(SourceSpec(
    "prism",
    HUB_NAME,
    {"conversation_id": "the conversation", "user_id": "the participant (the user)",
     "conversation_history": "list of {turn, role (user or model), content, within_turn_id, score (1-100), "
                             "if_chosen}"},
    4,
    prism_rows,
    options=(
        SourceOption("--min-rating-gap", at_least(1), 1, "skip pairs whose two ratings (1-100) differ by less "
                     "(default: 1, every pair of different ratings)"),
        SourceOption("--description", one_of(*DESCRIPTIONS), "both", "the user description from the survey: "
                     "self_description, system_string or both (default)"),
        SourceOption("--survey", str, "", "the survey file (default: survey.jsonl beside the conversations file; "
                     "the hub data set's survey configuration)"),
    ),
    hub_config="conversations",
    file_pattern="conversations*",
))
