"""Sweeps: tasks x presets x seeds trained on Ray, resumable, and reported as the QLLM paper reports.

``plan.py`` fixes what a sweep is (``sweep.json``); ``credit.py`` gives each task the credit function
its tfcaf presets train with; ``execute.py`` runs whatever is unfinished on an executor (in-process or
``ray_executor.py``); ``report.py`` renders curves, tables and the credit view (``interpret.py``).
"""

from qllm.sweep.execute import InlineExecutor, SweepStatus, run_sweep
from qllm.sweep.plan import RunKey, SweepError, SweepPlan
from qllm.sweep.report import write_report

__all__ = ["InlineExecutor", "RunKey", "SweepError", "SweepPlan", "SweepStatus", "run_sweep", "write_report"]
