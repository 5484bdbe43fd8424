"""Fast inference form of the FOMM per-frame networks: exact rewrites of the trained layers, plus an
optional reduced precision.

`fast_networks(kp_detector, generator, precision)` → (FastKPDetector, FastGenerator). They are
stand-ins for the two networks inside `realtime.FrameNet` / `FusedFrameNet` (same `forward_flat`,
`dense_motion_network.heads` and `decode` calls). They are built from the loaded, state-dict
compatible networks, which stay untouched, and are never saved. Inputs and outputs stay float32 NCHW.

Exact rewrites (equal in real arithmetic; float32 rounding moves the prediction by ~1e-6):
- eval BatchNorm folded into the preceding conv (Same/Down/Up blocks, ResBlock norm2 into conv1);
  ResBlock norm1 acts on the residual stream and becomes a per-channel affine (ARCHITECTURE §10);
- nearest ×2 upsampling + 3×3 conv = one stride-2 4×4 transposed conv: each output pixel sees only
  2×2 distinct inputs, so the up blocks do 2.25× fewer multiply-adds;
- two heads reading one feature map (kp + jacobian, mask + occlusion) merged into one conv;
- on CPU with oneDNN: channels-last activations, weights reordered once into oneDNN's blocked layout
  (an eager conv reorders them on every call), ReLU / sigmoid / residual add fused into the conv.

Precision: "fp32" (only the above), "bf16" (convs and activations in bfloat16: AMX on recent Xeons),
"fp16" (CUDA). In reduced precision the head convs and everything after them that turns features
into coordinates (softmaxes, keypoint means, flows, grid sampling) stay float32: grid sampling
magnifies coordinate errors by the image gradient, and the keypoint softmax divides logits by 0.1.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from models.fomm.blocks import AntiAliasInterpolation2d, Hourglass, ResBlock2d, UpBlock2d
from models.fomm.dense_motion import DenseMotionNetwork
from models.fomm.generator import OcclusionAwareGenerator
from models.fomm.keypoint_detector import KPDetector, heatmap_keypoints

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# Along one axis, nearest ×2 then taps (w0, w1, w2) give output 2m = w0·x[m−1] + (w1+w2)·x[m] and
# output 2m+1 = (w0+w1)·x[m] + w2·x[m+1]. A stride-2, padding-1 transposed conv with 4 taps k reads
# x[m−1]·k3 + x[m]·k1 for 2m and x[m]·k2 + x[m+1]·k0 for 2m+1, hence k = (w2, w1+w2, w0+w1, w0).
_UP_TAPS = torch.tensor([[0, 0, 1], [0, 1, 1], [1, 1, 0], [1, 0, 0]], dtype=torch.float64)
_ACTIVATIONS = {"none": lambda x: x, "relu": torch.relu, "sigmoid": torch.sigmoid}


def precision_dtype(precision: str) -> torch.dtype:
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}.")
    return PRECISIONS[precision]


@functools.cache
def _onednn_packed_ops() -> bool:
    """The packed-weight conv ops torch's own compiler (inductor) uses on CPU. They are private API,
    so their absence in some torch build falls back to F.conv2d instead of failing."""
    mkldnn = torch.ops.mkldnn
    names = ("_convolution_pointwise", "_convolution_transpose_pointwise", "_reorder_convolution_weight",
             "_reorder_convolution_transpose_weight")
    return torch.backends.mkldnn.is_available() and all(hasattr(mkldnn, name) for name in names)


def _uses_onednn(x: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16)
            and torch.backends.mkldnn.enabled and _onednn_packed_ops())


class FastConv(nn.Module):
    """A conv (or stride-2 transposed conv) with its activation, and optionally a residual add, fused.

    Weights come in float64 (folding is done there, so only the final cast rounds) and are stored in
    `dtype`; inputs are cast to it. On CPU the weights are packed for oneDNN once per input shape.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, padding: int, stride: int = 1,
                 groups: int = 1, transposed: bool = False, activation: str = "none",
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.register_buffer("weight", weight.to(dtype))
        self.register_buffer("bias", None if bias is None else bias.to(dtype))
        self.padding, self.stride, self.groups = [padding] * 2, [stride] * 2, groups
        self.transposed, self.activation = transposed, activation
        self._packed: dict[tuple, torch.Tensor] = {}

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        x = _to_compute(x, self.weight.dtype)
        if _uses_onednn(x) and not (self.transposed and residual is not None):
            return self._onednn(x, residual)
        if self.transposed:
            y = F.conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding, groups=self.groups)
        else:
            y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, groups=self.groups)
        return _ACTIVATIONS[self.activation](y if residual is None else y + residual)

    def _pack(self, x: torch.Tensor) -> torch.Tensor:
        key = (tuple(x.shape), x.dtype)
        if key not in self._packed:
            mkldnn, size = torch.ops.mkldnn, list(x.shape)
            if self.transposed:
                packed = mkldnn._reorder_convolution_transpose_weight(
                    self.weight, self.padding, [0, 0], self.stride, [1, 1], self.groups, size)
            else:
                packed = mkldnn._reorder_convolution_weight(self.weight, self.padding, self.stride, [1, 1],
                                                            self.groups, size)
            self._packed = {key: packed}  # one shape at a time: a new shape replaces the old packing
        return self._packed[key]

    def _onednn(self, x: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        mkldnn, weight = torch.ops.mkldnn, self._pack(x)
        if self.transposed:
            return mkldnn._convolution_transpose_pointwise(x, weight, self.bias, self.padding, [0, 0], self.stride,
                                                           [1, 1], self.groups, self.activation, [], "")
        if residual is None:
            return mkldnn._convolution_pointwise(x, weight, self.bias, self.padding, self.stride, [1, 1],
                                                 self.groups, self.activation, [], "")
        residual = residual.to(x.dtype)
        unary = None if self.activation == "none" else self.activation
        return mkldnn._convolution_pointwise.binary(x, residual, weight, self.bias, self.padding, self.stride,
                                                    [1, 1], self.groups, "add", None, unary, [], None)


def _bn_scale_shift(norm: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval BatchNorm as y = scale·x + shift, in float64."""
    scale = norm.weight.double() / torch.sqrt(norm.running_var.double() + norm.eps)
    return scale, norm.bias.double() - norm.running_mean.double() * scale


def _fold(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """conv followed by eval BN as one conv: (weight, bias) in float64."""
    scale, shift = _bn_scale_shift(norm)
    return conv.weight.double() * scale.view(-1, 1, 1, 1), conv.bias.double() * scale + shift


def upsample_conv_as_transposed(weight: torch.Tensor) -> torch.Tensor:
    """3×3 conv weight (out, in, 3, 3) after nearest ×2 → stride-2 transposed conv weight (in, out, 4, 4)."""
    taps = _UP_TAPS.to(weight.device)
    return torch.einsum("pu,oiuv,qv->iopq", taps, weight.double(), taps)


def conv_bn_relu(block: nn.Module, dtype: torch.dtype) -> FastConv:
    """SameBlock2d / DownBlock2d's conv → BN → ReLU (Down's pooling is applied by the caller)."""
    weight, bias = _fold(block.conv, block.norm)
    return FastConv(weight, bias, block.conv.padding[0], activation="relu", dtype=dtype)


def up_block(block: UpBlock2d, dtype: torch.dtype) -> FastConv:
    weight, bias = _fold(block.conv, block.norm)
    return FastConv(upsample_conv_as_transposed(weight), bias, padding=1, stride=2, transposed=True,
                    activation="relu", dtype=dtype)


def merged_heads(convs: list[nn.Conv2d], activation: str = "none") -> FastConv:
    """Convs reading the same input as one float32 conv; its output channels are theirs in order."""
    weight = torch.cat([c.weight.double() for c in convs])
    bias = torch.cat([c.bias.double() for c in convs])
    return FastConv(weight, bias, convs[0].padding[0], activation=activation)


def _to_compute(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # oneDNN and the CUDA half-precision tensor-core kernels run channels-last; cuDNN's fp32 kernels
    # are NCHW and would transpose in and out around every conv (measured on an H100).
    channels_last = x.device.type == "cpu" or dtype != torch.float32
    return x.to(dtype=dtype, memory_format=torch.channels_last if channels_last else torch.contiguous_format)


class FastHourglass(nn.Module):
    """Hourglass with folded, fused blocks; takes any float NCHW input, returns `dtype` channels-last."""

    def __init__(self, hourglass: Hourglass, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype
        self.down_blocks = nn.ModuleList(conv_bn_relu(b, dtype) for b in hourglass.encoder.down_blocks)
        self.up_blocks = nn.ModuleList(up_block(b, dtype) for b in hourglass.decoder.up_blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = [_to_compute(x, self.dtype)]
        for block in self.down_blocks:
            levels.append(F.avg_pool2d(block(levels[-1]), 2))
        out = levels[-1]
        for block, skip in zip(self.up_blocks, reversed(levels[:-1])):
            out = torch.cat((block(out), skip), dim=1)
        return out


class FastResBlock(nn.Module):
    """x + conv2(ReLU(conv1'(ReLU(a·x + b)))) with norm2 folded into conv1 and the add fused into conv2."""

    def __init__(self, block: ResBlock2d, dtype: torch.dtype) -> None:
        super().__init__()
        scale, shift = _bn_scale_shift(block.norm1)
        self.register_buffer("scale", scale.view(1, -1, 1, 1).to(dtype))
        self.register_buffer("shift", shift.view(1, -1, 1, 1).to(dtype))
        weight, bias = _fold(block.conv1, block.norm2)
        self.conv1 = FastConv(weight, bias, padding=1, activation="relu", dtype=dtype)
        self.conv2 = FastConv(block.conv2.weight.double(), block.conv2.bias.double(), padding=1, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(torch.relu(torch.addcmul(self.shift, x, self.scale))), residual=x)


def _antialias(down: AntiAliasInterpolation2d) -> FastConv:
    """The ×0.25 Gaussian downsampler as a float32 depthwise strided conv (tiny; kept exact)."""
    return FastConv(down.weight.double(), None, padding=down.pad, stride=down.stride, groups=down.groups)


class FastKPDetector(nn.Module):
    """KPDetector.forward_flat on the fast blocks: image → (value (B, K, 2), jacobian (B, K, 2, 2))."""

    def __init__(self, kp_detector: KPDetector, dtype: torch.dtype) -> None:
        super().__init__()
        self.num_kp, self.temperature = kp_detector.num_kp, kp_detector.temperature
        self.down = _antialias(kp_detector.down)
        self.predictor = FastHourglass(kp_detector.predictor, dtype)
        self.heads = merged_heads([kp_detector.kp, kp_detector.jacobian])

    def forward_flat(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = self.heads(self.predictor(self.down(image))).float().contiguous()
        return heatmap_keypoints(maps[:, :self.num_kp], maps[:, self.num_kp:], self.temperature)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward_flat(image)


class FastDenseMotion(nn.Module):
    """DenseMotionNetwork's per-frame steps on the fast blocks (the names FrameNet calls)."""

    hourglass_input = staticmethod(DenseMotionNetwork.hourglass_input)
    combine = staticmethod(DenseMotionNetwork.combine)

    def __init__(self, dense_motion: DenseMotionNetwork, dtype: torch.dtype) -> None:
        super().__init__()
        self.hourglass = FastHourglass(dense_motion.hourglass, dtype)
        self.head = merged_heads([dense_motion.mask, dense_motion.occlusion])

    def heads(self, motion_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = self.head(self.hourglass(motion_input)).float().contiguous()
        return F.softmax(maps[:, :-1], dim=1), torch.sigmoid(maps[:, -1:])


class FastGenerator(nn.Module):
    """The generator's per-frame half: `dense_motion_network` and `decode`, as FrameNet calls them."""

    def __init__(self, generator: OcclusionAwareGenerator, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype
        self.dense_motion_network = FastDenseMotion(generator.dense_motion_network, dtype)
        self.bottleneck = nn.Sequential(*(FastResBlock(b, dtype) for b in generator.bottleneck))
        self.up_blocks = nn.ModuleList(up_block(b, dtype) for b in generator.up_blocks)
        final = generator.final
        self.final = FastConv(final.weight.double(), final.bias.double(), final.padding[0], activation="sigmoid",
                              dtype=dtype)

    def decode(self, warped_features: torch.Tensor, occlusion: torch.Tensor) -> torch.Tensor:
        out = self.bottleneck(_to_compute(OcclusionAwareGenerator.occlude(warped_features, occlusion), self.dtype))
        for block in self.up_blocks:
            out = block(out)
        return self.final(out).float().contiguous()


def fast_networks(kp_detector: KPDetector, generator: OcclusionAwareGenerator, precision: str = "fp32",
                  keypoint_precision: str = "fp32") -> tuple[FastKPDetector, FastGenerator]:
    """The fast stand-ins for (kp_detector, generator), on the networks' device, in eval mode.

    The keypoint detector stays float32 by default: in bf16 its keypoints moved by up to 0.03
    (a pixel at 64×64) and the prediction by 0.13, ten times the error of the bf16 generator.
    """
    with torch.no_grad():
        fast = (FastKPDetector(kp_detector, precision_dtype(keypoint_precision)),
                FastGenerator(generator, precision_dtype(precision)))
    return tuple(m.eval() for m in fast)  # type: ignore[return-value]
