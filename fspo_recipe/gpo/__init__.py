"""Group Preference Optimization (GPO; Zhao, Dang and Grover, 2023, arXiv 2310.11523): the few-shot preference
module baseline.

A frozen language model embeds each (question, answer); a small transformer without positional encoding reads a
user's (or a group's) labelled examples as context points [embedding; preference] and predicts the preference of
target points [embedding; 0]; it is meta-trained over many users and adapts to a new one in context.

- :mod:`.module`: the transformer, its mask and its configuration;
- :mod:`.embed`: embeddings of a split's (question, answer) texts with a model of this plugin, cached on disk;
- :mod:`.tasks`: users' pairwise preferences (prepared FSPO splits) and groups' opinion distributions (OpinionQA
  schema) as context/target sets;
- :mod:`.train`: meta-training with checkpoints, resume and JSONL metrics; :mod:`.evaluate`: held-out users with
  the episodes' own shots, and the opinion alignment score;
- :mod:`.cli`: ``fspo-gpo embed|train|eval``.
"""
