"""The data sources: each module of this package declares one source (or two of a kind) with its exact schema, its
own options and how its rows become :class:`PreferenceRow`, and registers it; :mod:`.reading` reads any of them from
local files or the Hugging Face hub. Generic code (splits, episodes, writing) never names a source.

Adding a source: a module here with its row mapping and a :func:`register_source` call, imported below.
"""

from __future__ import annotations

# The sources, each registering itself (the order is the order of `fspo-prepare --help`).
from fspo_recipe.data.sources import elix, roleplay, prism, personalllm, hh, ultrafeedback, shp, stackexchange, oasst2  # noqa: F401, I001, E501
from fspo_recipe.data.sources.base import (EMPTY_TEXT, PLAIN_USER, SOURCES, PreferenceRow, ReadReport, RowContext,
                                           SourceOption, SourceSchemaError, SourceSpec, accept_pair, get_source,
                                           option_values, register_source)
from fspo_recipe.data.sources.dialogue import dialogue_prompt, hh_prompt, hh_turns, messages_field
from fspo_recipe.data.sources.elix import review_attributes
from fspo_recipe.data.sources.reading import read_source, split_name
from fspo_recipe.data.sources.stackexchange import strip_html

__all__ = ["EMPTY_TEXT", "PLAIN_USER", "SOURCES", "PreferenceRow", "ReadReport", "RowContext", "SourceOption",
           "SourceSchemaError", "SourceSpec", "accept_pair", "dialogue_prompt", "hh_turns", "messages_field", "get_source",
           "hh_prompt", "option_values", "read_source", "register_source", "review_attributes", "split_name",
           "strip_html"]
