"""Pairwise win rates judged per user (``fspo-judge``): the FSPO paper's headline metric.

A judge is shown a user's description, a question of that user and two answers (a system's and a baseline's) and
says which the user would prefer; every pair is judged in both orders, and orders that disagree count as a tie.

- :mod:`.matchups`: reading generation files into matchups (one question of one user, two systems' answers);
- :mod:`.verdicts`: parsing a judge's reply, combining the two orders;
- :mod:`.exact`: the exact judge of synthetic users (their hidden property decides, from the text alone);
- :mod:`.chat`: any OpenAI-compatible chat-completions server (vLLM, SGLang, OpenAI), concurrent, retried, cached;
- :mod:`.winrates`: win rates overall and per user with bootstrap intervals; JSON, CSV and a bar plot;
- :mod:`.cli`: the command.
"""
