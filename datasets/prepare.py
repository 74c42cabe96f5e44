"""Thin CLI over fspo_recipe.data.prepare (same as the `fspo-prepare` command); see --help."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fspo_recipe.data.prepare import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
