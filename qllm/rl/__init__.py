"""A compact MARL trainer: the QMIX family (IQL, VDN, QMIX, Qatten, RIIT, and the TFCAF mixer of QLLM)
and the actor-critic baselines COMA and MADDPG.

``train(preset("qmix", task="lbf-8x8-2p-2f", steps=100_000))`` runs the loop in ``train.py``; mixers
share one signature (``mixers.py``); learners one protocol (``learner.py``: ``QLearner``, ``coma.py``,
``maddpg.py``); ``config.py`` holds the typed settings and the named presets.
"""

from qllm.rl.config import PRESETS, TrainConfig, preset
from qllm.rl.mixers import MIXERS
from qllm.rl.train import RunError, TrainResult, evaluate_run, train

__all__ = ["MIXERS", "PRESETS", "RunError", "TrainConfig", "TrainResult", "evaluate_run", "preset", "train"]
