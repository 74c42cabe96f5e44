"""The paper's template, byte for byte."""

from fspo_recipe.data import Shot, render_episode

SHOTS = [Shot(" Q1 ", "P1", "D1\n"), Shot("Q2", "P2", "D2")]


def test_shots_with_dispreferred() -> None:
    ep = render_episode(SHOTS, "Q3", " C ", "R")
    assert ep.prompt == (
        "# Example 1\n## Question \nQ1\n## Preferred Response \nP1\n## Dispreferred Response \nD1\n\n"
        "# Example 2\n## Question \nQ2\n## Preferred Response \nP2\n## Dispreferred Response \nD2\n\n"
        "# Task\nGiven the examples above, generate a preferred response to the following question.\n"
        "## Question \nQ3\n"
    )
    assert ep.chosen == "## Preferred Response \nC\n"
    assert ep.rejected == "## Preferred Response \nR\n"


def test_no_shots() -> None:
    ep = render_episode([], "Q", "C", "R")
    assert ep.prompt == "# Task\nGenerate a response to the following question.\n## Question \nQ\n"


def test_without_dispreferred() -> None:
    ep = render_episode(SHOTS[:1], "Q3", "C", "R", include_dispreferred=False)
    assert ep.prompt == (
        "# Example 1\n## Question \nQ1\n## Response \nP1\n\n"
        "# Task\nGiven the examples above, generate a response to the following question.\n## Question \nQ3\n"
    )
    assert ep.chosen == "## Response \nC\n"


def test_rationale() -> None:
    ep = render_episode(SHOTS[:1], "Q3", "C", "R", rationale_chosen="The user is a child.",
                        rationale_rejected="The user is an expert.")
    assert "# Task\nGenerate a user description based on the examples above. Then, generate a preferred " \
           "response to the following question.\n## Question \nQ3\n" in ep.prompt
    assert ep.chosen == "## User Description\nThe user is a child.\n## Preferred Response \nC\n"
    assert ep.rejected == "## User Description\nThe user is an expert.\n## Preferred Response \nR\n"


def test_teacher_forced_rationale() -> None:
    ep = render_episode(SHOTS[:1], "Q3", "C", "R", rationale_chosen="The user is a child.", teacher_forced=True)
    assert ep.prompt.endswith("## Question \nQ3\n## User Description\nThe user is a child.\n")
    assert ep.chosen == "## Preferred Response \nC\n"


def test_no_shots_with_rationale_uses_the_no_shots_line() -> None:
    """The FSPO code tests `num_shots == 0` before the rationale variants: its zero-shot line wins."""
    for dispreferred in (True, False):
        ep = render_episode([], "Q", "C", "R", include_dispreferred=dispreferred, rationale_chosen="The user is a child.",
                            rationale_rejected="The user is an expert.")
        assert ep.prompt == "# Task\nGenerate a response to the following question.\n## Question \nQ\n"
        assert ep.chosen.startswith("## User Description\nThe user is a child.\n")
    forced = render_episode([], "Q", "C", "R", rationale_chosen="The user is a child.", teacher_forced=True)
    assert forced.prompt == ("# Task\nGenerate a response to the following question.\n## Question \nQ\n"
                             "## User Description\nThe user is a child.\n")


def test_the_rationale_variants_render_back_at_every_shot_count() -> None:
    from fspo_recipe.data.episodes import PromptParts, parse_prompt

    for rationale, forced in ((True, None), (True, "The user is a child."), (False, None)):
        parts = PromptParts(tuple(SHOTS), "Q3", True, rationale, forced)
        for k in range(3):
            prompt = parts.render(k)
            assert ("Generate a response to the following question." in prompt) == (k == 0)
            assert parse_prompt(prompt).render() == prompt
