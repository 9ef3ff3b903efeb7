"""The coder-evaluator loop as a LangGraph state machine (planned: issue "The coder-evaluator graph")."""
