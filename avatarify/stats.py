"""Run statistics: per-stage time, latency, frame rate, peak memory and startup time → JSON.

Input: stage timings (`with stats.stage("detect"): ...`), one `frame_done(capture_timestamp)` per
frame handed to the sinks. Output: `summary()`, the --stats JSON of DESIGN.md: frames, fps, engine,
backend, providers, stages_ms {stage: {p50, p95}}, latency_ms {p50, p95} (capture timestamp →
handed to the sinks), peak_rss_mb, startup_s (process start → first output frame).
This is the one timing helper of the app; the HUD reads its recent values.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from array import array
from collections import deque
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

_RECENT = 60  # frames the HUD averages over: about a second of live video


def process_start_wall_time() -> float:
    """When this process started (epoch seconds), so startup includes interpreter and imports."""
    import psutil

    return psutil.Process().create_time()


def peak_rss_mb() -> float:
    """The most resident memory this process has used so far, in MB (MiB)."""
    if sys.platform.startswith("linux"):
        # VmHWM belongs to this address space. getrusage's ru_maxrss would not do: Linux carries it
        # across exec, so a process started by a big parent reports the parent's peak.
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**10
    if sys.platform == "win32":
        import psutil

        return psutil.Process().memory_info().peak_wset / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # bytes on macOS


def percentiles(values_ms: array | np.ndarray) -> dict[str, float]:
    """{p50, p95} of durations in ms (an array('d') or a numpy array); zeros when there are none."""
    if len(values_ms) == 0:
        return {"p50": 0.0, "p95": 0.0}
    p50, p95 = np.percentile(np.asarray(values_ms, dtype=np.float64), [50, 95])
    return {"p50": round(float(p50), 3), "p95": round(float(p95), 3)}


class _StageTimer:
    """Context manager that adds the time spent inside it to one stage."""

    __slots__ = ("_stats", "_name", "_start")

    def __init__(self, stats: "Stats", name: str) -> None:
        self._stats, self._name, self._start = stats, name, 0.0

    def __enter__(self) -> "_StageTimer":
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self._stats.add(self._name, time.perf_counter() - self._start)


class Stats:
    """Collects timings of one run. Stage times of one frame add up if a stage is entered twice."""

    def __init__(self, process_start: float | None = None) -> None:
        self.process_start = process_start_wall_time() if process_start is None else process_start
        self.frames = 0
        self.startup_s: float | None = None
        self._stages: dict[str, array] = {}
        self._timers: dict[str, _StageTimer] = {}
        self._recent: dict[str, deque] = {}
        self._latency_ms = array("d")
        self._recent_latency: deque = deque(maxlen=_RECENT)
        self._recent_outputs: deque = deque(maxlen=_RECENT)
        self._first_output: float | None = None
        self._last_output: float | None = None

    def stage(self, name: str) -> _StageTimer:
        timer = self._timers.get(name)
        if timer is None:
            timer = self._timers[name] = _StageTimer(self, name)
        return timer

    def add(self, name: str, seconds: float) -> None:
        if name not in self._stages:
            self._stages[name] = array("d")
            self._recent[name] = deque(maxlen=_RECENT)
        self._stages[name].append(seconds * 1000.0)
        self._recent[name].append(seconds * 1000.0)

    def frame_done(self, capture_timestamp: float) -> None:
        """A frame was handed to the sinks; its latency runs from its capture timestamp to now."""
        now = time.perf_counter()
        latency_ms = (now - capture_timestamp) * 1000.0
        self._latency_ms.append(latency_ms)
        self._recent_latency.append(latency_ms)
        if self._first_output is None:
            self._first_output = now
            self.startup_s = time.time() - self.process_start
        self._last_output = now
        self._recent_outputs.append(now)
        self.frames += 1

    # --- reading --------------------------------------------------------------------------------

    def fps(self) -> float:
        """Output frames per second between the first and the last output frame."""
        if self.frames < 2 or self._last_output == self._first_output:
            return 0.0
        return (self.frames - 1) / (self._last_output - self._first_output)

    def recent_fps(self) -> float:
        """Output frame rate over the last second or so, for the HUD."""
        if len(self._recent_outputs) < 2:
            return 0.0
        span = self._recent_outputs[-1] - self._recent_outputs[0]
        return (len(self._recent_outputs) - 1) / span if span > 0 else 0.0

    def recent_ms(self) -> dict[str, float]:
        """Mean ms per stage over the last second or so, for the HUD."""
        return {name: float(np.mean(values)) for name, values in self._recent.items() if values}

    def recent_latency_ms(self) -> float:
        return float(np.mean(self._recent_latency)) if self._recent_latency else 0.0

    def summary(self, engine: str, backend_info: dict, extra: dict | None = None) -> dict:
        """The --stats JSON object."""
        result = {
            "frames": self.frames,
            "fps": round(self.fps(), 2),
            "engine": engine,
            "backend": backend_info.get("backend", "unknown"),
            "providers": list(backend_info.get("providers", [])),
            "stages_ms": {name: percentiles(values) for name, values in self._stages.items()},
            "latency_ms": percentiles(self._latency_ms),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "startup_s": round(self.startup_s, 3) if self.startup_s is not None else None,
        }
        result.update(extra or {})
        return result

    def write(self, path: Path, engine: str, backend_info: dict, extra: dict | None = None) -> dict:
        summary = self.summary(engine, backend_info, extra)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary, indent=2) + "\n")
        log.info("stats written to %s", path)
        return summary
