"""Shared test data: real public-domain face photos that ship inside installed packages."""
from __future__ import annotations

import os
import sys
from pathlib import Path

# Before numpy loads: OpenBLAS's own thread pool stalls for tens of ms when it competes with torch,
# onnxruntime and MediaPipe threads on 2 cores (run_live.py sets the same for the app).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.clips import load_photo_bgr  # noqa: E402


def load_astronaut_bgr() -> np.ndarray:
    return load_photo_bgr("astronaut")


def load_grace_hopper_bgr() -> np.ndarray:
    return load_photo_bgr("grace_hopper")


@pytest.fixture(scope="session")
def astronaut_bgr() -> np.ndarray:
    return load_astronaut_bgr()


@pytest.fixture(scope="session")
def grace_hopper_bgr() -> np.ndarray:
    return load_grace_hopper_bgr()
