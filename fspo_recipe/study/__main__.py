"""``python -m fspo_recipe.study``: the synthetic-users study."""

from fspo_recipe.study.cli import main

raise SystemExit(main())
