"""The solver's progress line on stderr."""

from __future__ import annotations

import sys
import time


class _Progress:
    """Periodic one-line progress report on stderr once a solve runs longer than ``after`` seconds."""

    def __init__(self, enabled: bool, restarts: int, after: float = 2.0, every: float = 1.0):
        self.enabled, self.restarts, self.after, self.every = enabled, restarts, after, every
        self.start = time.perf_counter()
        self.last = self.start
        self.shown = False
        self.restart = 0

    def __call__(self, iteration: int, value: float, grad_norm: float, unit: str = "iteration") -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self.start < self.after or now - self.last < self.every:
            return
        self.last, self.shown = now, True
        gradient = "" if grad_norm != grad_norm else f", grad norm {grad_norm:.2e}"  # NaN: not computed
        sys.stderr.write(f"\rsolving: restart {self.restart + 1}/{self.restarts}, {unit} {iteration}, "
                         f"loss {value:.10g}{gradient}, {now - self.start:.0f} s   ")
        sys.stderr.flush()

    def stage(self, message: str) -> None:
        """Announce a long step (used before O(N^2 d) work on large problems)."""
        if self.enabled:
            self.shown = True
            sys.stderr.write(f"\rsolving: restart {self.restart + 1}/{self.restarts}, {message}   ")
            sys.stderr.flush()

    def close(self) -> None:
        if self.shown:
            sys.stderr.write("\n")
            sys.stderr.flush()
