"""Helpers shared by the bench scripts: where the repo is, and writing results (JSON + pictures).

Bench scripts run as `python bench/X.py --out DIR` from the repo root; each makes the repo importable
itself (two lines at its top) before importing this module as `bench.common`.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]

log = logging.getLogger(__name__)


def _json_default(value: Any) -> Any:
    """numpy scalars and arrays appear in results; JSON wants plain Python numbers and lists."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def write_json(path: str | Path, data: dict) -> Path:
    """Write `data` as indented JSON (numpy values converted), creating the folder if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=_json_default) + "\n")
    log.info("wrote %s", path)
    return path


def read_json(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def write_png(path: str | Path, image_bgr: np.ndarray) -> Path:
    """Write a BGR uint8 picture as PNG, creating the folder if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image_bgr):
        raise OSError(f"could not write {path}")
    log.info("wrote %s", path)
    return path


def setup_cli_logging(verbose: bool = False) -> None:
    """One logging format for every bench script."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
