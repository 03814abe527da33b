"""The solver's progress on stderr: one :class:`ncgeo.progress.Progress` bar per restart."""

from __future__ import annotations

from ..progress import Progress


class _Progress:
    """The solve's progress on stderr (:class:`ncgeo.progress.Progress`, one bar per restart),
    shown once a restart runs longer than ``after`` seconds."""

    def __init__(self, enabled: bool, restarts: int, after: float = 2.0):
        self.enabled, self.restarts, self.after = enabled, restarts, after
        self.restart = 0
        self._bar, self._bar_restart = None, None

    def _label(self) -> str:
        return f"solving, restart {self.restart + 1}/{self.restarts}"

    def _current(self, unit: str) -> Progress:
        if self._bar_restart != self.restart:  # a new restart: a new bar
            self.close()
            self._bar = Progress(self._label(), unit=f"{unit}s", enabled=self.enabled, delay=self.after)
            self._bar_restart = self.restart
        return self._bar

    def __call__(self, iteration: int, value: float, grad_norm: float, unit: str = "iteration") -> None:
        gradient = {} if grad_norm != grad_norm else {"grad_norm": f"{grad_norm:.2e}"}  # NaN: not computed
        self._current(unit).moveto(iteration, loss=f"{value:.10g}", **gradient)

    def stage(self, message: str) -> None:
        """Announce a long step (used before O(N^2 d) work on large problems)."""
        self._current("iteration").message(f"{self._label()}: {message}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._bar, self._bar_restart = None, None
