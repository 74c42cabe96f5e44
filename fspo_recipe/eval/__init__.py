"""Evaluation of personalization on held-out users: `fairseq2 lm preference_eval`."""
