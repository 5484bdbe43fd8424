"""ONNX export: single-file opset-17 graphs with named I/O, onnxruntime parity, CLI error lines."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from export.onnx_export import PARITY_TOLERANCE
from models.fomm.realtime import FRAME_INPUTS, FUSED_FRAME_INPUTS, SOURCE_OUTPUTS

REPO = Path(__file__).resolve().parents[1]


def test_graphs_are_checked_and_named(onnx_dir):
    manifest = json.loads((onnx_dir / "manifest.json").read_text())
    assert set(manifest["graphs"]) == {"fomm_keypoints", "fomm_source", "fomm_frame", "fomm_frame_kp"}
    assert all(error <= PARITY_TOLERANCE for error in manifest["parity"].values())
    expected_inputs = {"fomm_keypoints.onnx": ["image"], "fomm_source.onnx": ["source_image"],
                       "fomm_frame.onnx": list(FUSED_FRAME_INPUTS), "fomm_frame_kp.onnx": list(FRAME_INPUTS)}
    for filename, inputs in expected_inputs.items():
        model = onnx.load(onnx_dir / filename, load_external_data=False)
        assert [i.name for i in model.graph.input] == inputs
        assert model.opset_import[0].version >= 17
        assert not any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer)
        image_inputs = [i for i in model.graph.input if "image" in i.name]
        for image in image_inputs:
            assert [d.dim_value for d in image.type.tensor_type.shape.dim] == [1, 3, 256, 256]
    source = onnx.load(onnx_dir / "fomm_source.onnx", load_external_data=False)
    assert [o.name for o in source.graph.output] == list(SOURCE_OUTPUTS)
    ops = {node.op_type for node in onnx.load(onnx_dir / "fomm_frame.onnx").graph.node}
    assert "GridSample" in ops and "Inverse" not in ops


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "export", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_cli_tensorrt_without_tensorrt_says_so_in_one_line(fomm_checkpoint, tmp_path):
    pytest.importorskip("onnxruntime")
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here")
    result = _cli("--checkpoint", str(fomm_checkpoint), "--out", str(tmp_path / "out"), "--tensorrt")
    assert result.returncode != 0
    assert "TensorRT is not installed" in _one_line(result.stderr)


def test_cli_user_errors_are_one_line(tmp_path, fomm_checkpoint):
    missing = _cli("--checkpoint", str(tmp_path / "nope.pth.tar"), "--out", str(tmp_path / "out"))
    assert missing.returncode != 0 and "does not exist" in _one_line(missing.stderr)
    bad = tmp_path / "bad.pth.tar"
    bad.write_bytes(b"\x00garbage" * 100)
    broken = _cli("--checkpoint", str(bad), "--out", str(tmp_path / "out"))
    assert broken.returncode != 0 and "not a PyTorch checkpoint" in _one_line(broken.stderr)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    unwritable = _cli("--checkpoint", str(fomm_checkpoint), "--out", str(blocker / "sub"))
    assert unwritable.returncode != 0 and "Cannot write" in _one_line(unwritable.stderr)
