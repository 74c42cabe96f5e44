"""The synthetic-users study (docs/studies.md): ``python -m fspo_recipe.study`` with the same arguments.

    python example_training_scripts/synthetic_study.py [--out synthetic_study_out] [--quick] [--seeds 0,1,2]
    bash example_training_scripts/synthetic_study.sh [--quick]          (the same, setting up .venv first)
"""

from fspo_recipe.study.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
