"""The FSPO prompt template, byte for byte as in the paper's released code (see shared FSPO_REFERENCE)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple

# One place for every template string.
QUESTION_HEADER: Final = "## Question \n"
PREFERRED_HEADER: Final = "## Preferred Response \n"
DISPREFERRED_HEADER: Final = "## Dispreferred Response \n"
RESPONSE_HEADER: Final = "## Response \n"
DESCRIPTION_HEADER: Final = "## User Description\n"
TASK_HEADER: Final = "# Task\n"

INSTRUCTION_NO_SHOTS: Final = "Generate a response to the following question."
INSTRUCTION_DISPREFERRED: Final = "Given the examples above, generate a preferred response to the following question."
INSTRUCTION_PLAIN: Final = "Given the examples above, generate a response to the following question."
INSTRUCTION_RATIONALE_DISPREFERRED: Final = (
    "Generate a user description based on the examples above. Then, generate a preferred response to the "
    "following question."
)
INSTRUCTION_RATIONALE_PLAIN: Final = (
    "Generate a user description based on the examples above. Then, generate a response to the following question."
)


class Shot(NamedTuple):
    """One labelled preference of the user, shown in the prompt."""

    question: str
    preferred: str
    dispreferred: str


@dataclass(frozen=True)
class RenderedEpisode:
    """The three strings of one training example: the ``src``, ``tgt_chosen`` and ``tgt_rejected`` of the JSONL."""

    prompt: str
    chosen: str
    rejected: str


def instruction(num_shots: int, *, include_dispreferred: bool, rationale: bool) -> str:
    """The instruction line of the task block (FSPO_REFERENCE, "Instruction line"). As in the FSPO code, zero shots
    give the plain line whatever the variant: the no-shots test comes first, before the rationale lines."""
    if num_shots == 0:
        return INSTRUCTION_NO_SHOTS
    if rationale:
        return INSTRUCTION_RATIONALE_DISPREFERRED if include_dispreferred else INSTRUCTION_RATIONALE_PLAIN
    return INSTRUCTION_DISPREFERRED if include_dispreferred else INSTRUCTION_PLAIN


def shot_body(shot: Shot | tuple[str, str, str], *, include_dispreferred: bool) -> str:
    """A shot's block without its ``# Example i`` line, ending with the blank line (rendered once per row)."""
    question, preferred, dispreferred = (s.strip() for s in shot)
    if include_dispreferred:
        return f"{QUESTION_HEADER}{question}\n{PREFERRED_HEADER}{preferred}\n{DISPREFERRED_HEADER}{dispreferred}\n\n"
    return f"{QUESTION_HEADER}{question}\n{RESPONSE_HEADER}{preferred}\n\n"


def example_header(index: int) -> str:
    """The first line of the ``index``-th (1-based) shot block."""
    return f"# Example {index}\n"


def render_episode(
    shots: Sequence[Shot | tuple[str, str, str]],
    question: str,
    chosen: str,
    rejected: str,
    *,
    include_dispreferred: bool = True,
    rationale_chosen: str | None = None,
    rationale_rejected: str | None = None,
    teacher_forced: bool = False,
) -> RenderedEpisode:
    """Render one FSPO example: N shots of a user, then a new question of the same user and two targets.

    ``shots`` are (question, preferred, dispreferred) triples. With ``rationale_chosen`` the model first writes
    the user description: the chosen target starts with ``rationale_chosen`` (this user's description), the
    rejected with ``rationale_rejected`` (the description of the user the rejected response was written for).
    With ``teacher_forced`` the true description is appended to the prompt instead and the targets are the plain
    responses under their usual header. All texts are stripped of surrounding white space. The same function
    renders the prompt of a new user at inference time (pass empty ``chosen``/``rejected`` and use ``prompt``).
    """
    bodies = [shot_body(shot, include_dispreferred=include_dispreferred) for shot in shots]
    return render_from_bodies(
        bodies,
        question,
        chosen,
        rejected,
        include_dispreferred=include_dispreferred,
        rationale_chosen=rationale_chosen,
        rationale_rejected=rationale_rejected,
        teacher_forced=teacher_forced,
    )


def render_from_bodies(
    bodies: Sequence[str],
    question: str,
    chosen: str,
    rejected: str,
    *,
    include_dispreferred: bool = True,
    rationale_chosen: str | None = None,
    rationale_rejected: str | None = None,
    teacher_forced: bool = False,
) -> RenderedEpisode:
    """:func:`render_episode` with the shots given as :func:`shot_body` strings (episode building caches them)."""
    rationale = rationale_chosen is not None
    if rationale and not teacher_forced and rationale_rejected is None:
        raise ValueError("rationale_rejected is required with rationale_chosen (unless teacher_forced).")
    if teacher_forced and not rationale:
        raise ValueError("teacher_forced needs rationale_chosen, the description appended to the prompt.")
    blocks = [example_header(i) + body for i, body in enumerate(bodies, 1)]
    line = instruction(len(bodies), include_dispreferred=include_dispreferred, rationale=rationale)
    prompt = "".join(blocks) + f"{TASK_HEADER}{line}\n{QUESTION_HEADER}{question.strip()}\n"

    header = PREFERRED_HEADER if include_dispreferred else RESPONSE_HEADER
    chosen_text = f"{header}{chosen.strip()}\n"
    rejected_text = f"{header}{rejected.strip()}\n"

    if rationale and teacher_forced:
        prompt += f"{DESCRIPTION_HEADER}{rationale_chosen.strip()}\n"  # type: ignore[union-attr]
        return RenderedEpisode(prompt, chosen_text, rejected_text)
    if rationale:
        chosen_text = f"{DESCRIPTION_HEADER}{rationale_chosen.strip()}\n{chosen_text}"  # type: ignore[union-attr]
        rejected_text = f"{DESCRIPTION_HEADER}{rationale_rejected.strip()}\n{rejected_text}"  # type: ignore[union-attr]
    return RenderedEpisode(prompt, chosen_text, rejected_text)


@dataclass(frozen=True)
class PromptParts:
    """The parts of an FSPO prompt: the shots, the query's question, and the template variant. Rendered with
    :meth:`render` (any number of the shots); stored with every prepared example as its ``episode`` field, so that
    readers and evaluators re-render prompts (fewer shots) from structure instead of parsing ``src`` back."""

    shots: tuple[Shot, ...]
    question: str
    include_dispreferred: bool = True
    rationale: bool = False
    """The targets start with a user description (the instruction asks for it)."""

    teacher_forced_description: str | None = None
    """A user description appended to the prompt (teacher-forced rationale)."""

    def render(self, num_shots: int | None = None, *, newest: bool = False) -> str:
        """The prompt with ``num_shots`` shots (all by default): the first ones, or with ``newest`` the last ones
        (dropping the oldest first), renumbered from 1."""
        k = len(self.shots) if num_shots is None else max(0, min(num_shots, len(self.shots)))
        kept = self.shots[len(self.shots) - k :] if newest else self.shots[:k]
        forced = self.teacher_forced_description
        return render_episode(
            kept,
            self.question,
            "",
            "",
            include_dispreferred=self.include_dispreferred,
            rationale_chosen=forced if forced is not None else ("" if self.rationale else None),
            rationale_rejected="" if self.rationale else None,
            teacher_forced=forced is not None,
        ).prompt

    def to_record(self) -> dict[str, object]:
        """The ``episode`` field of a prepared JSONL line."""
        return {
            "shots": [{"question": q, "preferred": p, "dispreferred": d} for q, p, d in self.shots],
            "query": self.question,
            "include_dispreferred": self.include_dispreferred,
            "rationale": self.rationale,
            "description": self.teacher_forced_description,
        }

    @staticmethod
    def from_record(record: object) -> PromptParts:
        """The inverse of :meth:`to_record`. :raises ValueError: naming the field that is missing or wrong."""
        if not isinstance(record, dict):
            raise ValueError("field 'episode' must be an object")
        shots = record.get("shots")
        if not isinstance(shots, list):
            raise ValueError("field 'episode.shots' must be a list")
        parsed = []
        for i, shot in enumerate(shots):
            texts = [shot.get(k) for k in ("question", "preferred", "dispreferred")] if isinstance(shot, dict) else None
            if texts is None or not all(isinstance(t, str) for t in texts):
                raise ValueError(f"field 'episode.shots[{i}]' must have string question, preferred, dispreferred")
            parsed.append(Shot(*texts))  # type: ignore[arg-type]
        question, description = record.get("query"), record.get("description")
        if not isinstance(question, str):
            raise ValueError("field 'episode.query' must be a string")
        if description is not None and not isinstance(description, str):
            raise ValueError("field 'episode.description' must be a string or null")
        return PromptParts(tuple(parsed), question, bool(record.get("include_dispreferred", True)),
                           bool(record.get("rationale", False)), description)


class PromptParseError(ValueError):
    """A prompt is not in the FSPO template."""


def parse_prompt(prompt: str) -> PromptParts:
    """Take a prompt rendered by :func:`render_episode` apart: for files prepared before examples carried their
    ``episode`` field (and for prompts a user rendered), so they can be rendered again with fewer shots.

    The result renders back to exactly ``prompt`` (checked), so an ambiguous text (a response that itself contains
    the template's headers) raises :class:`PromptParseError` instead of being split wrongly.
    """
    task = prompt.rfind(TASK_HEADER)
    if task < 0 or (task > 0 and not prompt[:task].endswith("\n\n")):
        raise PromptParseError("no '# Task' block at the end of the prompt")
    head, tail = prompt[:task], prompt[task + len(TASK_HEADER) :]

    line, sep, rest = tail.partition("\n" + QUESTION_HEADER)
    if not sep:
        raise PromptParseError("no '## Question' line in the task block")
    include_dispreferred = line in (INSTRUCTION_DISPREFERRED, INSTRUCTION_RATIONALE_DISPREFERRED, INSTRUCTION_NO_SHOTS)
    rationale = line in (INSTRUCTION_RATIONALE_DISPREFERRED, INSTRUCTION_RATIONALE_PLAIN)
    description = None
    question, sep, after = rest.partition("\n" + DESCRIPTION_HEADER)
    if sep:
        description = after[:-1] if after.endswith("\n") else after
    elif question.endswith("\n"):
        question = question[:-1]

    shots: list[Shot] = []
    blocks = head.split("\n\n# Example ")
    if head:
        blocks[0] = blocks[0].removeprefix("# Example ")
        if head.count(PREFERRED_HEADER) == 0 and head.count(RESPONSE_HEADER) > 0:
            include_dispreferred = False
        for i, block in enumerate(blocks, 1):
            number, _, body = block.partition("\n")
            if number != str(i):
                raise PromptParseError(f"shot {i} is numbered '{number}'")
            body = body.removeprefix(QUESTION_HEADER)
            if include_dispreferred:
                q, _, rest_ = body.partition("\n" + PREFERRED_HEADER)
                p, _, d = rest_.partition("\n" + DISPREFERRED_HEADER)
                shots.append(Shot(q, p, d.removesuffix("\n\n").removesuffix("\n")))
            else:
                q, _, p = body.partition("\n" + RESPONSE_HEADER)
                shots.append(Shot(q, p.removesuffix("\n\n").removesuffix("\n"), ""))

    parsed = PromptParts(tuple(shots), question, include_dispreferred, rationale, description)
    if parsed.render() != prompt:
        raise PromptParseError("the prompt does not render back to itself (a text contains template headers?)")
    return parsed


def render_with_shots(parts: PromptParts, num_shots: int, *, newest: bool = False) -> str:
    """``parts.render(num_shots, newest=newest)``: the prompt with only ``num_shots`` shots."""
    return parts.render(num_shots, newest=newest)


def prompt_parts(example: dict[str, object]) -> PromptParts:
    """The parts of a prepared example's prompt: its ``episode`` field, or (older files) its ``src`` parsed back.

    :raises ValueError: the ``episode`` field is malformed or does not render to ``src``;
        :class:`PromptParseError`: there is no ``episode`` and ``src`` is not in the FSPO template.
    """
    if "episode" not in example:
        return parse_prompt(str(example["src"]))
    parts = PromptParts.from_record(example["episode"])
    if parts.render() != example["src"]:
        raise ValueError("field 'src' is not the prompt its 'episode' field renders (edited by hand?)")
    return parts


@dataclass(frozen=True)
class Completion:
    """A model's continuation of an FSPO prompt, split into its parts (the inverse of the target rendering)."""

    description: str | None
    """The user description it wrote first (rationale variant), if any."""

    response: str
    """The answer to the question: the text under the response header, up to the next header."""


def split_completion(text: str) -> Completion:
    """Split a generated (or a data) target: ``[## User Description\\n<d>\\n]## Preferred Response \\n<answer>\\n``.

    A continuation without a response header is all answer; whatever follows the answer under a new markdown
    header (``# ...``, ``## ...``: a model going on with another example) is not part of it.
    """
    description = None
    body = text
    at, header = min(((text.find(h), h) for h in (PREFERRED_HEADER, RESPONSE_HEADER) if h in text),
                     default=(-1, ""))
    if at >= 0:
        head, body = text[:at], text[at + len(header) :]
        if head.startswith(DESCRIPTION_HEADER):
            description = head[len(DESCRIPTION_HEADER) :].strip()
    elif text.startswith(DESCRIPTION_HEADER):
        description, body = text[len(DESCRIPTION_HEADER) :].strip(), ""
    lines = body.split("\n")
    end = next((i for i, line in enumerate(lines) if i > 0 and line.startswith("#")), len(lines))
    return Completion(description, "\n".join(lines[:end]).strip())
