"""`StageClock`: names each stage of `rmdiag run` on stderr and keeps its seconds."""

from __future__ import annotations

import sys
import time


class StageClock:
    """Names each stage on stderr as it starts and keeps the seconds each took."""

    def __init__(self) -> None:
        self.started = self.mark = time.perf_counter()
        self.current: str | None = None
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str | None, detail: str = "") -> None:
        now = time.perf_counter()
        if self.current is not None:
            self.seconds[self.current] = round(self.seconds.get(self.current, 0.0)
                                               + now - self.mark, 3)
        self.current, self.mark = name, now
        if name is not None:
            print(f"rmdiag run [{now - self.started:6.1f} s] {name}{detail}", file=sys.stderr,
                  flush=True)

    def note(self, text: str) -> None:
        """A line about the current stage, without starting another."""
        print(f"rmdiag run [{time.perf_counter() - self.started:6.1f} s] {self.current}{text}",
              file=sys.stderr, flush=True)
