"""``python -m fspo_recipe.study``: the synthetic-users study."""

from fspo_recipe.study.run import main

raise SystemExit(main())
