"""Ctrl-C during training: the first asks the loop to save and stop, a second stops at once
but never in the middle of a checkpoint save or a metrics line."""
from __future__ import annotations

import contextlib
import signal
import threading


class StopFlag:
    """First Ctrl-C sets ``requested`` (the loop saves and stops); a second one raises
    KeyboardInterrupt, except inside :meth:`hold` (a checkpoint save, a metrics line), where
    it is raised when the block is complete, so nothing is left half-written."""

    def __init__(self):
        self.requested, self._old, self._held, self._deferred = False, None, 0, False

    def __enter__(self):
        # Only the main thread may set handlers; an ignored SIGINT (a background job) stays ignored.
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN):
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if not self.requested:
            self.requested = True
        elif self._held:
            self._deferred = True
        else:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def hold(self):
        self._held += 1
        try:
            yield
        finally:
            self._held -= 1
        if self._deferred and not self._held:
            self._deferred = False
            raise KeyboardInterrupt

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False
