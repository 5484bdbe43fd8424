"""Frame I/O of the FOMM network on the device it runs on: the driving crop goes in, the network's
picture comes out, with no per-frame host<->device copy beyond those two.

Input: the driving crop, BGR uint8 (S, S, 3) with S a multiple of 256 (the engine size), and the
motion strength. Output: the network's prediction as BGR uint8 (256, 256, 3) on the host
(`predict_bgr`), or the composed picture (`animate`, with the avatar's compose.PasteBack and the
head motion): the torch path pastes back on the device (compose_torch.py) and downloads only the
composed picture; onnxruntime's path pastes back on the host.
- `ToNetwork` / `FromNetwork`: the torch modules of the conversion at the network's edges (BGR uint8
  HWC <-> RGB float NCHW 256 in [0, 1]), the same arithmetic as the host path of engines/fomm.py
  (area average when shrinking; clip, x255, +0.5, floor), run where the network runs.
- `TorchDeviceIO`: uploads the uint8 crop (pinned staging on CUDA), converts, runs the runner's
  device-in/device-out frame call (cached avatar tensors stay on the device), converts back and
  downloads the uint8 picture.
- `OrtDeviceIO`: the same for onnxruntime with IOBinding: the two modules exported to small ONNX
  graphs in memory, run on the frame session's providers; the cached avatar and calibration tensors
  are bound as device OrtValues, uploaded once each; only the crop goes up and the picture comes down.
Both run on "cpu" too (the tests check them against the host path there).
"""
from __future__ import annotations

import io
import logging
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from avatarify.compose import PasteBack
from avatarify.compose_torch import TorchPasteBack
from avatarify.motion import Similarity
from avatarify.runners import OnnxRuntimeRunner, RunnerError, TorchRunner
from models.fomm.realtime import FUSED_FRAME_INPUTS

log = logging.getLogger(__name__)

NETWORK_SIZE = 256
_CACHED_INPUTS = FUSED_FRAME_INPUTS[1:-1]  # avatar + calibration tensors, between image and strength


class FrameIO(Protocol):
    """Turns a driving crop into the network's BGR prediction (`predict_bgr`) or into the composed
    picture (`animate`: the prediction pasted back by `paste_back`); `where` says where it converts."""

    where: str

    def predict_bgr(self, crop_bgr: np.ndarray, strength: float) -> np.ndarray: ...

    def animate(self, paste_back: PasteBack, crop_bgr: np.ndarray, strength: float,
                head: Similarity | None) -> np.ndarray: ...


class ToNetwork(nn.Module):
    """BGR uint8 (S, S, 3) -> RGB float32 (1, 3, 256, 256) in [0, 1]. S = k*256 shrinks by a k x k
    average (what cv2.INTER_AREA does at an integer factor); other sizes resample bilinearly."""

    def forward(self, crop_bgr: torch.Tensor) -> torch.Tensor:
        image = crop_bgr.permute(2, 0, 1)[[2, 1, 0]].unsqueeze(0).float() / 255.0
        side = crop_bgr.shape[0]
        if side == NETWORK_SIZE:
            return image
        if side % NETWORK_SIZE == 0:
            return F.avg_pool2d(image, side // NETWORK_SIZE)
        return F.interpolate(image, size=(NETWORK_SIZE, NETWORK_SIZE), mode="bilinear", align_corners=False,
                             antialias=side > NETWORK_SIZE)


class FromNetwork(nn.Module):
    """RGB float (1, 3, 256, 256) -> BGR uint8 (256, 256, 3), rounded as the host path rounds."""

    def forward(self, prediction: torch.Tensor) -> torch.Tensor:
        rgb = prediction[0].float().clamp(0.0, 1.0)
        return torch.floor(rgb[[2, 1, 0]] * 255.0 + 0.5).to(torch.uint8).permute(1, 2, 0).contiguous()


class TorchDeviceIO:
    """Torch runner, conversions on its device: one uint8 upload and one uint8 download per frame."""

    where = "device"

    def __init__(self, runner: TorchRunner) -> None:
        self.runner = runner
        self.device = runner.device
        self.to_network = ToNetwork()
        self.from_network = FromNetwork()
        self._pinned = self.device.type == "cuda"
        self._upload: torch.Tensor | None = None
        self._download: torch.Tensor | None = None
        self._paste: TorchPasteBack | None = None

    def _staging(self, buffer: torch.Tensor | None, shape: tuple[int, ...]) -> torch.Tensor:
        """Page-locked host buffers on CUDA, so the copies run as DMA without an extra host copy."""
        if buffer is None or tuple(buffer.shape) != shape:
            buffer = torch.empty(shape, dtype=torch.uint8, pin_memory=self._pinned)
        return buffer

    def predict_tensor(self, crop_bgr: np.ndarray, strength: float) -> torch.Tensor:
        """The prediction (1, 3, 256, 256) float on the device; overwritten by the next call when
        the runner replays a CUDA graph, so use it (or enqueue work on it) before calling again."""
        self._upload = self._staging(self._upload, crop_bgr.shape)
        self._upload.numpy()[...] = crop_bgr  # the previous frame's upload finished: it was synced
        with torch.inference_mode():
            crop = self._upload.to(self.device, non_blocking=True)
            return self.runner.animate_tensor(self.to_network(crop), strength)

    def download(self, picture: torch.Tensor) -> np.ndarray:
        """A uint8 device picture as a numpy array (waits for the device)."""
        self._download = self._staging(self._download, tuple(picture.shape))
        self._download.copy_(picture, non_blocking=True)
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()
        return self._download.numpy().copy()  # the staging buffer is reused by the next frame

    def predict_bgr(self, crop_bgr: np.ndarray, strength: float) -> np.ndarray:
        with torch.inference_mode():
            return self.download(self.from_network(self.predict_tensor(crop_bgr, strength)))

    def animate(self, paste_back: PasteBack, crop_bgr: np.ndarray, strength: float,
                head: Similarity | None) -> np.ndarray:
        """The composed picture: prediction and paste-back on the device, one download at the end."""
        if self._paste is None or self._paste.source is not paste_back or \
                self._paste.reference_of is not paste_back.reference:
            self._paste = TorchPasteBack(paste_back, self.device)  # per avatar: its data uploaded once
        with torch.inference_mode():
            prediction = self.from_network(self.predict_tensor(crop_bgr, strength))
            return self.download(self._paste.paste(prediction, head))


def onnx_model_bytes(module: nn.Module, example: torch.Tensor, input_name: str, output_name: str) -> bytes:
    """A small conversion module as an in-memory ONNX model (opset 17, static shapes)."""
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(module.eval(), (example,), buffer, input_names=[input_name], output_names=[output_name],
                          opset_version=17, dynamo=False)
    return buffer.getvalue()


class OrtDeviceIO:
    """onnxruntime with IOBinding: crop up, conversions and the fused frame graph on `device`
    ("cuda" or "cpu"), picture down. The runner must run the fused frame graph."""

    where = "device"

    def __init__(self, runner: OnnxRuntimeRunner, device: str = "cuda", device_id: int = 0) -> None:
        import onnxruntime as ort

        if not runner.fused:
            raise RunnerError("Device frame I/O needs the fused frame graph (fomm_frame.onnx).")
        self._ort = ort
        self.runner = runner
        self.device, self.device_id = device, device_id
        # The conversion graphs are a few elementwise ops: TensorRT would build engines for them at
        # every start, so they run on the CUDA provider (or the CPU) only.
        self._providers = [p for p in runner.frame_session.get_providers() if p != "TensorrtExecutionProvider"]
        self._pre: dict[tuple[int, ...], object] = {}
        self._post = self._session(onnx_model_bytes(FromNetwork(), torch.zeros(1, 3, NETWORK_SIZE, NETWORK_SIZE),
                                                    "prediction", "frame_bgr"))
        self._on_device: dict[int, tuple[np.ndarray, object]] = {}
        self._strength: tuple[float, object] | None = None
        self._image = self._device_buffer((1, 3, NETWORK_SIZE, NETWORK_SIZE))
        self._prediction = self._device_buffer((1, 3, NETWORK_SIZE, NETWORK_SIZE))

    def _session(self, model: bytes):
        options = self._ort.SessionOptions()
        options.intra_op_num_threads = 1  # tiny graphs: a thread pool would cost more than it saves
        return self._ort.InferenceSession(model, options, providers=self._providers)

    def _device_buffer(self, shape: tuple[int, ...]):
        return self._ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.float32, self.device, self.device_id)

    def _pre_session(self, shape: tuple[int, ...]):
        if shape not in self._pre:
            self._pre[shape] = self._session(onnx_model_bytes(ToNetwork(), torch.zeros(shape, dtype=torch.uint8),
                                                              "crop_bgr", "image"))
        return self._pre[shape]

    def _value(self, array: np.ndarray):
        """The device copy of a cached avatar/calibration array, uploaded once per array object."""
        hit = self._on_device.get(id(array))
        if hit is None or hit[0] is not array:
            if len(self._on_device) > 2 * len(_CACHED_INPUTS):  # drop entries of replaced avatars
                self._on_device.clear()
            hit = (array, self._ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device,
                                                                 self.device_id))
            self._on_device[id(array)] = hit
        return hit[1]

    def _strength_value(self, strength: float):
        if self._strength is None or self._strength[0] != strength:
            self._strength = (strength, self._ort.OrtValue.ortvalue_from_numpy(
                np.array([strength], np.float32), self.device, self.device_id))
        return self._strength[1]

    def _run(self, session, inputs: dict, outputs: dict) -> None:
        binding = session.io_binding()
        for name, value in inputs.items():
            if isinstance(value, np.ndarray):
                binding.bind_cpu_input(name, value)
            else:
                binding.bind_ortvalue_input(name, value)
        for name, value in outputs.items():
            binding.bind_ortvalue_output(name, value)
        session.run_with_iobinding(binding)

    def predict_bgr(self, crop_bgr: np.ndarray, strength: float) -> np.ndarray:
        cached = self.runner.cached_state()
        self._run(self._pre_session(crop_bgr.shape), {"crop_bgr": np.ascontiguousarray(crop_bgr)},
                  {"image": self._image})
        inputs = {"driving_image": self._image, **{n: self._value(cached[n]) for n in _CACHED_INPUTS},
                  "strength": self._strength_value(float(strength))}
        self._run(self.runner.frame_session, inputs, {"prediction": self._prediction})
        binding = self._post.io_binding()
        binding.bind_ortvalue_input("prediction", self._prediction)
        binding.bind_output("frame_bgr", "cpu")
        self._post.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def animate(self, paste_back: PasteBack, crop_bgr: np.ndarray, strength: float,
                head: Similarity | None) -> np.ndarray:
        """The composed picture; the paste-back runs on the host (it is torch code, and this path
        is the one taken when torch has no CUDA)."""
        return paste_back.paste(self.predict_bgr(crop_bgr, strength), head)

