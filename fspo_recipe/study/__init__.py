"""The synthetic-users study (``python -m fspo_recipe.study``; docs/studies.md): plans, the runner, the report."""
