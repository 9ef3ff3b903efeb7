"""`qllm` with every batch asked for one way, for timing the ask schedule against a fixed choice.

The first argument pins :meth:`qllm.rl.collector.AskSchedule.ask` to an :class:`~qllm.rl.collector.Ask`
(``BEFORE_UPDATE``: how qllm asked before the schedule existed; ``AFTER_UNROLL``); the rest is the `qllm`
command line. A run's numbers are the same either way; only its timing differs. `paired_runs.py` and
`vs_epymarl.py` take an executable, so wrap it (a python beside the wrapper, for `vs_epymarl.py`'s torch
check):

    mkdir -p PINNED && ln -s $PWD/.venv/bin/python PINNED/python
    printf '#!/bin/sh\nexec %s %s BEFORE_UPDATE "$@"\n' $PWD/.venv/bin/python \
        $PWD/reports/training-speed/ask_pinned.py > PINNED/qllm && chmod +x PINNED/qllm
    .venv/bin/python reports/training-speed/paired_runs.py --before PINNED/qllm --after .venv/bin/qllm \
        --pairs 6 -- --task lbf-8x8-2p-2f --mixer qllm --tfcaf FILE --steps 50000
"""

from __future__ import annotations

import sys

from qllm.cli import main
from qllm.rl.collector import Ask, AskSchedule

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in Ask.__members__:
        sys.exit(f"usage: ask_pinned.py {{{','.join(Ask.__members__)}}} QLLM-ARGS...")
    pinned = Ask[sys.argv.pop(1)]
    AskSchedule.ask = lambda schedule: pinned  # type: ignore[method-assign]
    sys.argv[0] = "qllm"
    sys.exit(main())
