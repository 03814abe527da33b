"""One progress reporter for every long computation: a tqdm bar on stderr.

The UFM solver (``solve_ufm(progress=True)``), the sims sweep runner and ``deep`` training
and evaluation all report through :class:`Progress`, so every long command looks the same:

    epoch 3/30: 100%|##########| 48/48 [00:05<00:00, 9.1 steps/s, loss 4.102, 1160 img/s, lr 0.1]

On a terminal the bar is redrawn in place (at most every 0.1 s); on anything else (a log
file, a pipe, a batch job) it becomes one plain line of figures (no bar) per refresh, at
most every ``log_interval`` seconds, plus the final state, so logs stay short and readable.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from tqdm import tqdm

__all__ = ["Progress"]


class _Lines:
    """A stream for tqdm that turns its carriage-return redraws into one line each (not a terminal)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").rstrip("\n")
        if text.strip():  # tqdm clears its line with spaces before a message: nothing to keep
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


class Progress:
    """A progress bar on stderr (``tqdm``), or nothing at all when ``enabled`` is false.

    Parameters
    ----------
    description : str
        Shown before the bar, e.g. ``"epoch 3/30"``.
    total : int, optional
        Number of units of the whole task; ``None`` shows a counter without a bar.
    unit : str
        Name of the units, plural (``"steps"``, ``"points"``, ``"iterations"``, ``"images"``).
    enabled : bool
        ``False``: every method does nothing (``--no-progress``, ``--json -``, other ranks).
    initial : int
        Units already done (e.g. sweep points read back from the resume cache).
    delay : float
        Seconds before the bar first appears (short tasks stay silent).
    log_interval : float
        Seconds between lines when ``stream`` is not a terminal.
    stream : text stream, optional
        Default ``sys.stderr`` as it is when the bar is made.
    """

    def __init__(self, description: str, total: int | None = None, *, unit: str = "it", enabled: bool = True,
                 initial: int = 0, delay: float = 0.0, log_interval: float = 10.0, stream: TextIO | None = None):
        stream = sys.stderr if stream is None else stream
        self.enabled = bool(enabled)
        terminal = bool(getattr(stream, "isatty", lambda: False)())
        self._stream, self._terminal = stream, terminal
        self._bar = None
        if self.enabled:
            self._bar = tqdm(total=total, desc=description, unit=f" {unit}", initial=initial, delay=delay,
                             file=stream if terminal else _Lines(stream),
                             mininterval=0.1 if terminal else log_interval, dynamic_ncols=terminal,
                             ncols=None if terminal else 0, leave=True)  # 0: the figures without a bar

    def update(self, count: int = 1, **values: Any) -> None:
        """Advance by ``count`` units; ``values`` replace the figures shown after the bar
        (``loss=1.5`` shows ``loss 1.5``; floats with 4 significant digits unless formatted)."""
        if self._bar is not None:
            if values:
                self._bar.set_postfix_str(_values_text(values), refresh=False)
            self._bar.update(count)
            bar = self._bar
            if bar.last_print_t < bar.start_t + bar.delay <= bar._time():  # due, never shown: show it now
                bar.refresh()  # (tqdm would wait for the first log_interval to pass)
                bar.last_print_t, bar.last_print_n = bar._time(), bar.n

    def moveto(self, done: int, **values: Any) -> None:
        """Set the number of units done to ``done`` (e.g. an optimiser's iteration count)."""
        if self._bar is not None:
            self.update(done - self._bar.n, **values)

    def describe(self, description: str) -> None:
        """Replace the text before the bar."""
        if self._bar is not None:
            self._bar.set_description_str(description, refresh=False)

    def message(self, text: str) -> None:
        """Print ``text`` as a line of its own (above the bar on a terminal)."""
        if self._bar is not None and self._terminal:
            self._bar.write(text, file=self._stream)  # clears the bar, prints, redraws it
        elif self._bar is not None:
            self._stream.write(text + "\n")
            self._stream.flush()

    def close(self) -> None:
        """Draw the final state and end the bar's line (idempotent)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _values_text(values: dict[str, Any]) -> str:
    return ", ".join(f"{name.replace('_', ' ')} {value:.4g}" if isinstance(value, float) else
                     f"{name.replace('_', ' ')} {value}" for name, value in values.items())
