"""Isolated execution and validation of LLM-written credit functions (planned: issue "Sandbox")."""
