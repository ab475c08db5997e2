"""`StageClock`: names each stage of `rmdiag run` on stderr and keeps its seconds and peak
memory."""

from __future__ import annotations

import re
import resource
import sys
import time
from pathlib import Path

from rmdiag import distributed

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _high_water_mib() -> float | None:
    """This process's peak resident memory (VmHWM) since it was last reset, in MiB (Linux)."""
    try:
        match = re.search(r"VmHWM:\s+(\d+) kB", _STATUS.read_text())
    except OSError:
        return None
    return int(match.group(1)) / 1024 if match else None


def _reset_high_water() -> bool:
    """Restart VmHWM from the current RSS (Linux: writing 5 to clear_refs); False if refused."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def _children_peak_mib() -> float:
    """The largest peak RSS of any finished child process so far (worker pools), in MiB."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux: KiB


class StageClock:
    """Names each stage on stderr as it starts and keeps the seconds each took and its peak
    memory: `memory[stage]` = {"peak_rss_mib": this process's peak during the stage,
    "child_peak_rss_mib": the largest worker process that ended during it, if one did}. Where
    the high-water mark cannot be reset (not Linux), the process's peak is since its start and
    `"since_start": true` says so."""

    def __init__(self) -> None:
        self.started = self.mark = time.perf_counter()
        self.current: str | None = None
        self.seconds: dict[str, float] = {}
        self.memory: dict[str, dict[str, float | bool]] = {}
        self._per_stage = _reset_high_water()
        self._children = _children_peak_mib()
        self.quiet = not distributed.is_main()  # under torchrun rank 0 names the stages

    def _close_memory(self, name: str) -> None:
        peak = _high_water_mib()
        if peak is None:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        entry = self.memory.setdefault(name, {"peak_rss_mib": 0.0})
        entry["peak_rss_mib"] = round(max(float(entry["peak_rss_mib"]), peak), 1)
        children = _children_peak_mib()
        if children > self._children:  # a worker that ended in this stage set a new maximum
            entry["child_peak_rss_mib"] = round(children, 1)
            self._children = children
        if not self._per_stage:
            entry["since_start"] = True
        self._per_stage = _reset_high_water()

    def __call__(self, name: str | None, detail: str = "") -> None:
        now = time.perf_counter()
        if self.current is not None:
            self.seconds[self.current] = round(self.seconds.get(self.current, 0.0)
                                               + now - self.mark, 3)
            self._close_memory(self.current)
        self.current, self.mark = name, now
        if name is not None and not self.quiet:
            print(f"rmdiag run [{now - self.started:6.1f} s] {name}{detail}", file=sys.stderr,
                  flush=True)

    def note(self, text: str) -> None:
        """A line about the current stage, without starting another."""
        if self.quiet:
            return
        print(f"rmdiag run [{time.perf_counter() - self.started:6.1f} s] {self.current}{text}",
              file=sys.stderr, flush=True)
