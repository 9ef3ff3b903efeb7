"""Prompt templates as versioned files, loaded by name (planned: issue "The coder-evaluator graph")."""
