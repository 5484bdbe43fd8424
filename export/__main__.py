"""CLI: python -m export --checkpoint CKPT --out DIR [--fp16] [--tensorrt] [--unfused-frame]

Writes the ONNX graphs of the FOMM real-time split (checked against torch on onnxruntime) and,
with --tensorrt, serialized TensorRT engines. User errors end in one line on stderr, exit code 2.
"""
from __future__ import annotations

import argparse
import logging
import sys
import warnings

from export.onnx_export import ExportError, export_fomm
from export.tensorrt_build import TensorRTUnavailable, import_tensorrt
from models.fomm.checkpoint import CheckpointError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="FOMM checkpoint, e.g. checkpoints/vox-adv-cpk.pth.tar")
    parser.add_argument("--out", required=True, help="output folder for the .onnx files (and engines)")
    parser.add_argument("--fp16", action="store_true", help="build TensorRT engines in FP16")
    parser.add_argument("--tensorrt", action="store_true", help="also build TensorRT engines (needs tensorrt + GPU)")
    parser.add_argument("--unfused-frame", action="store_true",
                        help="also write fomm_frame_kp.onnx (per-frame graph without the keypoint detector)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", category=UserWarning)  # tracer chatter, not user-relevant
    try:
        if args.tensorrt:
            import_tensorrt()  # fail in one line before spending minutes on the ONNX export
        result = export_fomm(args.checkpoint, args.out, fp16=args.fp16, progress=not args.no_progress,
                             tensorrt=args.tensorrt, unfused_frame=args.unfused_frame)
    except (CheckpointError, ExportError, TensorRTUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, path in {**result.graphs, **result.engines}.items():
        parity = result.parity.get(path.name)
        print(f"{name}: {path}" + (f"  (max |ort - torch| = {parity:.1e})" if parity is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
