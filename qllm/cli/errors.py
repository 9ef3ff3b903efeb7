"""One exit code per kind of error, whichever command meets it.

- :data:`USAGE` (2): what the person typed or pointed at cannot be used: a bad flag value, an unknown
  task, a file or folder that does not exist or is not what the flag wants, a settings file with bad
  settings, a credit function they gave that the sandbox refuses, a provider their flags name that
  cannot be reached with their credentials. Fix the command line and run it again.
- :data:`FAILURE` (1): the work itself failed: training stopped (:class:`~qllm.rl.train.TrainingError`),
  generation ended without a valid credit function, a sweep's run failed, a check the command makes
  (``sandbox check``, ``evals compare``) said no.

The same library exception can be either, depending on where its input came from: a credit-function
file refused by the sandbox is a usage error in ``qllm train --tfcaf FILE`` but a failure in ``qllm
run``, which wrote the file itself. So commands say, per call, which exceptions are which
(:func:`exit_codes`), rather than one table deciding for all.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import typer
from rich.text import Text

from qllm.cli.common import console

USAGE = 2
FAILURE = 1

Errors = type[Exception] | tuple[type[Exception], ...]
"""What ``except`` accepts: one exception class or a tuple of them."""


def usage_error(message: str, param_hint: str | None = None) -> typer.BadParameter:
    """Exit code 2 with click's usage message (``Invalid value for '--flag': message``)."""
    return typer.BadParameter(message, param_hint=param_hint)


def error_exit(message: str, code: int = FAILURE, then: str | None = None) -> typer.Exit:
    """Print ``error: message`` (and the line ``then``, e.g. how to resume) and exit with ``code``.

    Text, not markup: messages hold user-given paths, which may contain square brackets. Soft wrap keeps
    the message one line however narrow the terminal (or the 80 columns of a pipe), so scripts can grep
    it."""
    console.print(Text.assemble(("error: ", "red"), message), soft_wrap=True)
    if then:
        console.print(Text(then), soft_wrap=True)
    return typer.Exit(code)


def interrupted(then: str) -> NoReturn:
    """End the process after Ctrl-C, saying ``then`` (how to resume), with exit code 130 at once.

    At once: a step of the run may sit in a model call on another thread for minutes, and Python waits
    for such threads before it exits. Nothing is lost by not waiting: runs write their trace and
    checkpoints as they go, so they resume after a Ctrl-C as after a kill."""
    console.print(Text(f"\ninterrupted; {then}"), soft_wrap=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)


@contextmanager
def exit_codes(*, usage: Errors = (), failure: Errors = (), param_hint: str | None = None) -> Iterator[None]:
    """Turn the library's exceptions raised inside the block into one-line errors and exit codes:
    ``usage`` ones into :func:`usage_error` (naming ``param_hint``), ``failure`` ones into
    :func:`error_exit` with code 1. An exception in both counts as usage. Others pass through."""
    try:
        yield
    except usage as exc:
        raise usage_error(str(exc), param_hint) from None
    except failure as exc:
        raise error_exit(str(exc), FAILURE) from None
