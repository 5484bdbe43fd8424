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


@pytest.fixture(scope="session")
def fomm_checkpoint(tmp_path_factory) -> Path:
    """Random FOMM weights saved in the official checkpoint layout (no download), once per session."""
    from models.fomm.checkpoint import save_random_checkpoint

    path = tmp_path_factory.getbasetemp() / "fomm-random.pth.tar"
    return path if path.is_file() else save_random_checkpoint(path, seed=0)


@pytest.fixture(scope="session")
def fomm_cache_dir(tmp_path_factory) -> Path:
    """The app's --cache-dir for the session: the ONNX export below lands where the app looks for it."""
    return tmp_path_factory.getbasetemp() / "cache"


@pytest.fixture(scope="session")
def onnx_dir(fomm_checkpoint, fomm_cache_dir) -> Path:
    """The checkpoint exported and checked once per session, as the app's first run does."""
    from export.onnx_export import cached_export

    return cached_export(fomm_checkpoint, fomm_cache_dir / "fomm", progress=False)
