"""Data preparation, pure Python (no torch or fairseq2 import): episode rendering and writers."""

from fspo_recipe.data.episodes import RenderedEpisode as RenderedEpisode, Shot as Shot, render_episode as render_episode
