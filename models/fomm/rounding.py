"""How far two correct computations of the FOMM networks may differ: rounding bounds, not one
machine's result. The export's parity check and the tests compare against these.

Two fp32 runs of the same network differ wherever the sums run in another order: another batch
size (oneDNN blocks the batch differently), another kernel (onnxruntime against oneDNN, cuDNN) or
another instruction set (AVX-512 against AVX2 tiles, FMA or not). Model: each convolution output is
a sum of K products, and a different order changes it by about eps·sqrt(K) of its unit scale
(batch-normed features, a sigmoid picture in [0, 1]); L such layers in series add their errors as
a random walk, so the RMS difference is eps·sqrt(K·L), and the largest of the 196,608 values of a
256² prediction lies about 5 RMS out (sqrt(2·ln N) ≈ 4.9 for N Gaussian errors). With FOMM
vox-256's largest fan-in K = 18,432 (3×3×2048, the dense-motion hourglass decoder) and L = 42
convolutions along the per-frame path (12 keypoint detector + 30 generator), that is RMS 1.0e-4,
max 5.2e-4. Measured max differences (random weights, real photos) sit 10–40× below: 3e-6 to 1.5e-5
on an Intel Xeon with AVX-512 and AMX, 1.0e-5 to 4.6e-5 with oneDNN held to AVX2
(ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2), 2.34e-5 on an AMD EPYC without AVX-512. A
real fault stays far above the bound: one frame's strength broadcast across a batch of two moved
the picture by 0.25.

Reduced precision (bf16, fp16) rounds each layer's inputs and weights to `eps` and accumulates in
fp32: a relative error of eps·sqrt(2/3) per layer (two uniform roundings), a random walk over the
generator's 30 layers (the keypoint detector stays fp32), times the final sigmoid's slope 1/4.

`border` allows for grid sampling where the flow crosses the zero-padded edge of the feature map:
there a flow error becomes an intensity error as large as the step to zero over one texel, which
made the worst pixel about 4× the interior's in the measurements above (its mean hardly moves).
"""
from __future__ import annotations

import math

EPS = {"fp32": 2.0 ** -23, "bf16": 2.0 ** -8, "fp16": 2.0 ** -11}  # spacing of the numbers at 1
LARGEST_FAN_IN = 18432
LAYERS_IN_SERIES = 42
GENERATOR_LAYERS = 30
TAIL = 5.0  # the largest of ~2e5 roughly Gaussian errors, in RMS
BORDER = 4.0
SIGMOID_SLOPE = 0.25


def fp32_reassociation_rms(fan_in: int = LARGEST_FAN_IN, layers: int = LAYERS_IN_SERIES) -> float:
    return EPS["fp32"] * math.sqrt(fan_in * layers)


def fp32_reassociation_max(fan_in: int = LARGEST_FAN_IN, layers: int = LAYERS_IN_SERIES) -> float:
    return TAIL * fp32_reassociation_rms(fan_in, layers)


def reduced_precision_rms(precision: str, layers: int = GENERATOR_LAYERS) -> float:
    return SIGMOID_SLOPE * EPS[precision] * math.sqrt(2.0 / 3.0) * math.sqrt(layers)


def reduced_precision_max(precision: str, layers: int = GENERATOR_LAYERS) -> float:
    return BORDER * TAIL * reduced_precision_rms(precision, layers)


# The ones used: any two fp32 computations of the per-frame network (5.2e-4 max, 1.0e-4 mean).
FP32_MAX = fp32_reassociation_max()
FP32_MEAN = fp32_reassociation_rms()
