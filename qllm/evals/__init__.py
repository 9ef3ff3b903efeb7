"""Prompt-quality evals: suites of generation tasks run with real models, scored, stored and compared.

Kept apart from the unit tests: evals call real models, take minutes, and their results are kept.
``suites.py`` defines the cases, ``scorers.py`` the scorers (the semantic ones on each task's own probes,
:mod:`qllm.envs.probes`),
``runner.py`` runs a suite, ``store.py`` keeps results in SQLite, ``compare.py`` reports and compares.
"""
