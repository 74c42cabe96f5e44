"""StackExchange preferences: questions and scored answers in HTML, stripped as the DPO code strips them."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from html.entities import name2codepoint
from html.parser import HTMLParser
from typing import Any, Final, NamedTuple

from fspo_recipe.data.sources.base import PreferenceRow, RowContext, SourceSpec, finite, plain_pair, register_source
from fspo_recipe.data.sources.dialogue import dialogue_prompt
from fspo_recipe.data.sources.plain import plain_after_reading, plain_options


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
        turns = [("user", strip_html(question))]
        prompt = dialogue_prompt(turns)
        texts = [" " + strip_html(a["text"]) for a in answers]
        scores = [finite(ctx, i, "pm_score", a["pm_score"]) for a in answers]
        for j in range(len(answers)):
            for k in range(j + 1, len(answers)):
                pair_id = f"{row_id}/{j}-{k}"
                if scores[j] == scores[k]:
                    ctx.report.skip("two answers with equal pm_score", pair_id)
                    continue
                best, worst = (j, k) if scores[j] > scores[k] else (k, j)  # type: ignore[operator]
                plain_pair(ctx, pair_id, prompt, texts[best], texts[worst], out, turns)
    return out


register_source(SourceSpec("stackexchange", "HuggingFaceH4/stack-exchange-preferences",
                           {"question": "the question (HTML)",
                            "answers": "list of {text (HTML), pm_score (higher is better)}"},
                           0, stackexchange_rows,
                           plain=True, options=plain_options(test_fraction=0.01), after_reading=plain_after_reading))
