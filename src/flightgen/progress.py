"""Progress lines of the CLI's long-running verbs: ``[  12.3 s] message`` on stderr."""

import sys
import time

__all__ = ["progress"]


def progress(stream=None):
    """A ``say(message)`` that prints the message to ``stream`` (default stderr), prefixed
    by the seconds since this call."""
    stream = stream or sys.stderr
    started = time.perf_counter()

    def say(message):
        print(f"[{time.perf_counter() - started:7.1f} s] {message}", file=stream, flush=True)

    return say
