"""Log-probs of preference pairs, shared by training, reference pre-scoring (fspo-score-reference) and evaluation."""
