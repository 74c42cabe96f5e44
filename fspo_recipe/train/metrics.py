"""The FSPO unit's metrics: names, display names and priorities, in one place (the unit's metric bag, fairseq2's
metric descriptors and ``fspo-metrics`` all read this list)."""

from __future__ import annotations

from typing import Final, NamedTuple


class UnitMetric(NamedTuple):
    name: str
    """The metric's name in the metric bag (``bag.<name>``)."""

    display_name: str
    """Its name in ``metrics/train.jsonl`` and on the console."""

    priority: int
    """fairseq2's display order (lower first)."""


UNIT_METRICS: Final = (
    UnitMetric("fspo_loss", "FSPO Loss", 0),
    UnitMetric("criterion_loss", "Criterion Loss", 1),
    UnitMetric("nll_loss", "NLL Loss", 2),
    UnitMetric("reward_accuracy", "Reward Accuracy", 10),
    UnitMetric("reward_margin", "Reward Margin", 11),
    UnitMetric("chosen_rewards", "Chosen Rewards", 12),
    UnitMetric("rejected_rewards", "Rejected Rewards", 13),
    UnitMetric("chosen_logps", "Chosen Sequence Log Probabilities", 50),
    UnitMetric("rejected_logps", "Rejected Sequence Log Probabilities", 50),
    UnitMetric("chosen_lengths", "Chosen Sequence Length", 70),
    UnitMetric("rejected_lengths", "Rejected Sequence Length", 70),
)
"""Every value is a mean over pairs, synchronized over data-parallel ranks."""

METRIC_NAMES: Final = tuple(m.name for m in UNIT_METRICS)
