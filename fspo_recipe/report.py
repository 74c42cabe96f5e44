"""Print the last published training metrics of a ``fairseq2 lm preference_finetune`` run."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from fspo_recipe.cli import run_command
from fspo_recipe.train.metrics import UNIT_METRICS

SHOWN = [m.display_name for m in UNIT_METRICS] + ["Gradient Norm", "Learning Rate", "Total Number of Examples"]


def last_metrics(run_dir: Path) -> dict[str, object]:
    """Return the last line of ``run_dir/metrics/train.jsonl`` as a dict.

    :raises FileNotFoundError: if the run published no metrics.
    :raises ValueError: if the last line is not JSON (the file and line are named).
    """
    path = run_dir / "metrics" / "train.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {run_dir} the output directory of a training run?")
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{path} is empty: the run published no metrics yet.")
    try:
        return json.loads(lines[-1])
    except json.JSONDecodeError as ex:
        raise ValueError(f"{path}, line {len(lines)}: not valid JSON ({ex}).") from ex


def format_metrics(row: dict[str, object]) -> str:
    width = max(map(len, SHOWN))
    out = [f"step {row.get('Step', '?')}"]
    for key in SHOWN:
        if key in row:
            value = row[key]
            out.append(f"  {key:<{width}}  {value:.6g}" if isinstance(value, float) else f"  {key:<{width}}  {value}")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fspo-metrics", description=__doc__)
    parser.add_argument("run_dir", type=Path, help="the OUTPUT_DIR given to `fairseq2 lm preference_finetune`")
    args = parser.parse_args(argv)
    def body() -> int:
        print(format_metrics(last_metrics(args.run_dir)))
        return 0

    return run_command("fspo-metrics", body, {(OSError, ValueError): 1})


if __name__ == "__main__":
    raise SystemExit(main())
