"""The synthetic-users study's plans (full, quick, the quick start's demo) and its constants."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from fspo_recipe.data.synthetic import POLES, PROPERTIES



@dataclass(frozen=True)
class Plan:
    users_per_pole: int
    rows_per_user: int
    test_rows_per_user: int
    shots: int
    batch_size: int
    sft_steps: int
    sft_lr: float
    ipo_steps: int
    ipo_lr: float
    ipo_beta: float
    passes: int | None
    """fspo-prepare --passes (None: its default 2(N+1))."""
    bootstrap: int
    rationale: bool
    """Train and evaluate the rationale variant too."""
    full_ablation: bool
    """Shots ablation on every FSPO evaluation (else on the held-out users of `fspo` only)."""
    curve_every: int
    """IPO checkpoint interval; FSPO's held-out accuracy is evaluated at each (accuracy versus step)."""
    properties: tuple[str, ...] = PROPERTIES
    """The properties users have preferences over (fspo-synthetic-users --properties)."""
    test_users_per_pole: int = 1
    """Held-out users per preference (fspo-synthetic-users --test-users-per-pole)."""
    sft_seconds_per_step: float = 0.4
    """A first guess of one SFT step on the 2-core machine, for the time estimates (corrected as stages finish)."""
    ipo_seconds_per_step: float = 0.45
    """Likewise for one IPO step (policy forward and backward, reference forward)."""
    sft_warmup: int = 30
    """Learning-rate warm-up steps of SFT (at most a quarter of its steps)."""
    ipo_warmup: int = 20
    """Learning-rate warm-up steps of IPO (at most a quarter of its steps)."""
    ipo_decay: bool = False
    """IPO's learning rate falls to 0 along a cosine after the warm-up (else constant, the presets' schedule)."""
    num_layers: int = 2
    """Decoder layers of the tiny llama (fspo-tiny-assets --num-layers)."""
    model_dim: int = 64
    """Its width (--model-dim)."""
    num_heads: int = 4
    """Its attention heads (--num-heads)."""
    kv_heads: int = 2
    """Its key/value heads (--kv-heads; fewer than num_heads: grouped-query attention)."""
    bpe_merges: int = 0
    """BPE tokens learned from the training episodes (fspo-tiny-assets --bpe-merges; 0: one token per byte)."""
    gpo_steps: int = 2000
    """Meta-training steps of the GPO baseline (fspo-gpo train)."""
    generate_examples: int | None = None
    """Held-out queries answered for the win rates (None: all)."""
    generate_tokens: int = 96
    """Longest generated answer, in tokens (the data's answers are under 60 bytes, about 15 tokens with BPE)."""

    eval_examples: int | None = None
    """Held-out pairs evaluated (the first of the split; None: all)."""

    sft_rejected: bool = False
    """SFT also on the rejected answers (the FSPO authors' SFT; ``include_rejected``); False: the chosen ones only."""

    nll_alpha: float = 0.0
    """Stage 2 with the ``rpo`` criterion (IPO plus this weight times the chosen answer's summed NLL); 0: plain IPO."""


FULL = Plan(users_per_pole=6, rows_per_user=80, test_rows_per_user=30, shots=2, batch_size=16, sft_steps=500,
            sft_lr=3e-3, ipo_steps=4000, ipo_lr=1e-3, ipo_beta=0.1, passes=None, bootstrap=1000, rationale=True,
            full_ablation=True, curve_every=500, kv_heads=4, bpe_merges=400, sft_seconds_per_step=0.2,
            ipo_seconds_per_step=0.15)


QUICK = Plan(users_per_pole=1, rows_per_user=12, test_rows_per_user=12, shots=2, batch_size=8, sft_steps=10, sft_lr=3e-3,
             ipo_steps=5, ipo_lr=1e-3, ipo_beta=0.1, passes=2, bootstrap=200, rationale=False, full_ablation=False,
             curve_every=5, gpo_steps=20, generate_examples=16, generate_tokens=32, kv_heads=4, bpe_merges=400)


DEMO = Plan(users_per_pole=6, rows_per_user=60, test_rows_per_user=20, shots=1, batch_size=16, sft_steps=50,
            sft_lr=3e-3, ipo_steps=250, ipo_lr=1e-3, ipo_beta=0.1, passes=None, bootstrap=1000, rationale=False,
            full_ablation=False, curve_every=250, properties=("case", "length"), test_users_per_pole=2)
"""The quick start's plan (example_training_scripts/quickstart.py): properties a 2-layer byte-level model reads from
one shot within minutes (not mood: which of 12 words is used), one shot per episode; see docs/studies.md."""


SMOLLM2_DEMO = Plan(users_per_pole=6, rows_per_user=16, test_rows_per_user=5, shots=2, batch_size=4, sft_steps=30,
                   sft_lr=1e-5, ipo_steps=20, ipo_lr=3e-6, ipo_beta=0.01, passes=None, bootstrap=1000, rationale=False,
                   full_ablation=False, curve_every=20, properties=("case", "length"), test_users_per_pole=3,
                   sft_warmup=3, ipo_warmup=3, sft_seconds_per_step=6.2, ipo_seconds_per_step=8.5, generate_tokens=32,
                   generate_examples=36, nll_alpha=50.0)
"""The quick start's plan on SmolLM2-135M-Instruct (``--model smollm2``): the paper's two stages from the pretrained
chat model, the prompts in its chat template, two shots per episode: SFT on the episodes' preferred answers (30
steps), then IPO plus the preferred answer's NLL (the ``rpo`` criterion, alpha 50: plain IPO raised the preferred
answers' NLL and garbled the answers; see docs/studies.md) from the SFT model, its reference (20 steps); 12 held-out
users with 5 rows each (about 64 pairs, as many per user, so that a model leaning to one pole without the shots
scores about half on them), 36 of their questions (3 per user) answered by the trained and the untrained model.
(24 SFT steps instead of 30 left 3 of 12 upper-case answers with the question's word in lower case.)"""


MODEL = "syn_tiny"


POLE_NAMES = [pole for prop in PROPERTIES for pole in POLES[prop]]
"""Every pole, property by property: the columns (or rows) of the tables by pole."""


START = 8.0
"""Seconds a fairseq2 command needs to start and load its models on the 2-core machine (for the estimates)."""


GPO_EMBEDDINGS = {"sft": "GPO, SFT-model embeddings", "untrained": "GPO, untrained-model embeddings"}


SMOLLM2_STUDY = dataclasses.replace(SMOLLM2_DEMO, generate_examples=24, gpo_steps=1000, test_users_per_pole=2,
                                    test_rows_per_user=6)
"""The study on SmolLM2-135M-Instruct (``python -m fspo_recipe.study --model smollm2``): the quick start's training
users, episodes and two stages (8 held-out users with 6 rows each: every row is evaluated on them), for every row of
the paper's comparison that runs on a CPU (fspo_recipe/study/real.py); 24 held-out queries (three per user) and as
many of the interpolated users answered by each system."""

SMOLLM2_QUICK = dataclasses.replace(SMOLLM2_DEMO, users_per_pole=1, rows_per_user=8, test_rows_per_user=3, sft_steps=2,
                                    ipo_steps=2, curve_every=2, bootstrap=100, generate_tokens=8,
                                    test_users_per_pole=1, generate_examples=4, gpo_steps=10)
"""Its pipeline check (``--quick``): a few pairs and steps; checks that every stage runs, not that anything is
learned."""
