"""qllm: LLM-written, training-free credit assignment for cooperative multi-agent reinforcement learning."""

__version__ = "0.1.0"
