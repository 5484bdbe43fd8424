"""Stats: the --stats JSON contract, per-stage percentiles, latency from the capture timestamp."""
from __future__ import annotations

import json
import mmap
import time

import psutil
import pytest

from avatarify.stats import Stats, peak_rss_mb

CONTRACT_KEYS = {"frames", "fps", "engine", "backend", "providers", "stages_ms", "latency_ms",
                 "peak_rss_mb", "startup_s"}


def test_summary_has_the_contract_keys_and_sane_values(tmp_path):
    stats = Stats(process_start=time.time() - 0.5)
    for index in range(20):
        captured_at = time.perf_counter()
        with stats.stage("detect"):
            time.sleep(0.002)
        stats.add("animate", 0.001 * (index + 1))
        stats.frame_done(captured_at)
    summary = stats.write(tmp_path / "stats.json", "mesh",
                          {"backend": "numpy", "providers": ["numpy-cpu"]}, {"size": 256})
    assert CONTRACT_KEYS <= summary.keys()
    assert json.loads((tmp_path / "stats.json").read_text()) == summary
    assert summary["frames"] == 20 and summary["fps"] > 0
    assert summary["engine"] == "mesh" and summary["providers"] == ["numpy-cpu"]
    assert summary["stages_ms"]["detect"]["p50"] >= 2.0
    assert summary["stages_ms"]["animate"]["p50"] == pytest.approx(10.5, abs=0.01)
    assert summary["stages_ms"]["animate"]["p95"] == pytest.approx(19.05, abs=0.01)
    assert 2.0 <= summary["latency_ms"]["p50"] <= summary["latency_ms"]["p95"]
    assert summary["startup_s"] >= 0.5
    assert 10 < summary["peak_rss_mb"] < 100_000
    assert summary["size"] == 256


def test_peak_rss_does_not_shrink_when_memory_is_freed():
    # Compare with the current resident size: earlier tests in this process may already have set a
    # high-water mark above anything this test allocates.
    process = psutil.Process()
    rss_before = process.memory_info().rss / 2**20
    peak_before = peak_rss_mb()
    block = mmap.mmap(-1, 64 * 2**20)  # fresh pages: a heap block might reuse memory already resident
    for offset in range(0, len(block), 4096):
        block[offset] = 1  # touch every page so it is really resident
    rss_during = process.memory_info().rss / 2**20
    during = peak_rss_mb()
    block.close()
    assert rss_during >= rss_before + 50
    assert during >= max(peak_before, rss_during - 1.0)
    assert peak_rss_mb() >= during - 1.0  # the kernel updates its high-water mark lazily, by pages


def test_empty_run_reports_zeros_not_errors():
    summary = Stats().summary("mesh", {})
    assert summary["frames"] == 0 and summary["fps"] == 0.0 and summary["startup_s"] is None
    assert summary["latency_ms"] == {"p50": 0.0, "p95": 0.0}


MODULE_IMPORTED = time.time()  # the process (pytest) had started before this module was imported


def test_startup_counts_from_process_start():
    """Startup counts from the process's start (interpreter and imports), not from when Stats was
    made: at least as long as this module has been loaded. (The bound was once "< 600 s", which a
    slow machine's suite run passed by the time it got here.)"""
    stats = Stats()
    stats.frame_done(time.perf_counter())
    assert stats.startup_s >= time.time() - MODULE_IMPORTED - 0.05
    assert stats.startup_s <= time.time() - psutil.boot_time() + 1.0  # and no older than the machine
