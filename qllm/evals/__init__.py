"""Prompt-quality evals, kept apart from the unit tests (planned: issue "Prompt-quality evals")."""
