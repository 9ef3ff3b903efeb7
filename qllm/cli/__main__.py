"""`python -m qllm.cli` runs the same command line as `qllm`."""

from qllm.cli import main

main()
