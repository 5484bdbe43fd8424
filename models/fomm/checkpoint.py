"""Load the official FOMM vox-256 checkpoint safely, and write random ones for tests.

`load_fomm(path)` reads `vox-cpk.pth.tar` / `vox-adv-cpk.pth.tar` (a dict with `generator`,
`kp_detector`, `discriminator`, optimizer states, `epoch`) with `torch.load(weights_only=True)`
and returns (kp_detector, generator) in eval mode. Anything wrong ends in one `CheckpointError`
whose message is a single sentence saying what is wrong and what to do; weights that are NaN or
infinite are refused (they would animate to black frames).
`save_random_checkpoint(path)` writes random but well-conditioned weights in the same layout.
"""
from __future__ import annotations

import logging
import pickle
import re
from pathlib import Path

import torch
from torch import nn

from models.fomm.generator import OcclusionAwareGenerator
from models.fomm.keypoint_detector import KPDetector

log = logging.getLogger(__name__)

GET_CHECKPOINT = ("download vox-adv-cpk.pth.tar from the FOMM authors' published links "
                  "(see docs/fomm.md) or pass --checkpoint PATH")
_MAX_NAMED_KEYS = 3


class CheckpointError(ValueError):
    """The checkpoint cannot be used; the message is one user-readable sentence."""


def build_networks() -> tuple[KPDetector, OcclusionAwareGenerator]:
    """The vox-256 keypoint detector and generator with the config of vox-256.yaml."""
    return KPDetector(), OcclusionAwareGenerator()


def _read(path: Path) -> object:
    if not path.is_file():
        raise CheckpointError(f"Checkpoint file {path} does not exist; {GET_CHECKPOINT}.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # The weights-only unpickler names a refused callable ("Unsupported global: GLOBAL x.y").
        match = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if match:
            raise CheckpointError(f"{path} was refused because loading it would run code ({match.group(1)}); "
                                  f"only plain weight files are loaded, so {GET_CHECKPOINT}.") from None
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", str(exc))
        reason = detail.group(1).strip() if detail else str(exc).splitlines()[0]
        raise CheckpointError(f"{path} is not a PyTorch checkpoint that can be loaded safely ({reason}); "
                              f"{GET_CHECKPOINT}.") from None
    except Exception as exc:  # noqa: BLE001 - a malformed file can break the unpickler in any way
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path} is not a PyTorch checkpoint ({reason}); {GET_CHECKPOINT}.") from None


def _named(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_NAMED_KEYS])
    return shown + (", …" if len(keys) > _MAX_NAMED_KEYS else "")


def _check_state(path: Path, name: str, state: object, module: nn.Module) -> None:
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} has no usable '{name}' weights; {GET_CHECKPOINT}.")
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"misses {len(missing)} {name} keys ({_named(missing)})")
        if unexpected:
            parts.append(f"has {len(unexpected)} unexpected {name} keys ({_named(unexpected)})")
        raise CheckpointError(f"{path} does not match the FOMM vox-256 networks: it {' and '.join(parts)}; "
                              f"use vox-cpk.pth.tar or vox-adv-cpk.pth.tar (vox-256 config).")
    wrong = [f"{k} is {tuple(v.shape)} instead of {tuple(expected[k].shape)}"
             for k, v in state.items() if not isinstance(v, torch.Tensor) or v.shape != expected[k].shape]
    if wrong:
        raise CheckpointError(f"{path} has {len(wrong)} {name} weights of the wrong shape ({_named(wrong)}); "
                              f"it is not a vox-256 checkpoint, use vox-cpk.pth.tar or vox-adv-cpk.pth.tar.")


def _check_finite(path: Path, name: str, state: dict) -> None:
    bad = [f"{name}.{key}" for key, value in state.items()
           if value.is_floating_point() and not bool(torch.isfinite(value).all())]
    if bad:
        raise CheckpointError(f"{path} has weights that are NaN or infinite ({len(bad)} tensors: {_named(bad)}); "
                              f"the file is damaged, so {GET_CHECKPOINT}.")


def load_fomm(path: str | Path, device: str | torch.device = "cpu") -> tuple[KPDetector, OcclusionAwareGenerator]:
    """(kp_detector, generator) in eval mode from an official FOMM checkpoint file."""
    path = Path(path)
    checkpoint = _read(path)
    if not isinstance(checkpoint, dict) or not {"generator", "kp_detector"} <= checkpoint.keys():
        raise CheckpointError(f"{path} is not a FOMM checkpoint (it needs 'generator' and 'kp_detector' "
                              f"entries); {GET_CHECKPOINT}.")
    kp_detector, generator = build_networks()
    for name, module in (("kp_detector", kp_detector), ("generator", generator)):
        _check_state(path, name, checkpoint[name], module)
        _check_finite(path, name, checkpoint[name])
        module.load_state_dict(checkpoint[name], strict=True)
    log.info("Loaded FOMM checkpoint %s (epoch %s)", path, checkpoint.get("epoch", "?"))
    return kp_detector.to(device).eval(), generator.to(device).eval()


# ---------------------------------------------------------------------------------------------
# Random checkpoints for tests and benchmarks.


def _smooth_noise_images(generator: torch.Generator, count: int) -> torch.Tensor:
    """Blurry colour blobs in [0, 1]: image-like statistics for calibrating random BatchNorms."""
    coarse = torch.rand(count, 3, 8, 8, generator=generator)
    return nn.functional.interpolate(coarse, size=(256, 256), mode="bicubic", align_corners=False).clamp(0, 1)


def _randomize_norms(module: nn.Module, generator: torch.Generator) -> None:
    for norm in module.modules():
        if isinstance(norm, nn.BatchNorm2d):
            norm.weight.data = 0.75 + 0.5 * torch.rand(norm.num_features, generator=generator)
            norm.bias.data = 0.1 * torch.randn(norm.num_features, generator=generator)
            norm.reset_running_stats()
            norm.momentum = None  # cumulative average: one train pass sets the batch statistics


@torch.no_grad()
def _calibrate(module: nn.Module, run) -> None:
    """One train-mode pass so running statistics normalise activations like a trained net's."""
    module.train()
    run()
    module.eval()
    for norm in module.modules():
        if isinstance(norm, nn.BatchNorm2d):
            norm.momentum = 0.1


@torch.no_grad()
def random_networks(seed: int = 0) -> tuple[KPDetector, OcclusionAwareGenerator]:
    """Random vox-256 networks with distinct, finite keypoints and well-conditioned Jacobians.

    Default init would give near-uniform heatmaps (all keypoints at the centre) and identity
    Jacobians, which make parity tests meaningless; so BatchNorm statistics are calibrated on
    image-like inputs and the keypoint heads are rescaled to give peaked, varied outputs.
    """
    torch.manual_seed(seed)
    rng = torch.Generator().manual_seed(seed)
    kp_detector, generator = build_networks()
    images = _smooth_noise_images(rng, 2)

    _randomize_norms(kp_detector, rng)
    _calibrate(kp_detector, lambda: kp_detector.heads(images))
    logits, _ = kp_detector.heads(images)
    # Logit spread 0.4 → 4 after the 0.1 temperature: peaked but not one-hot heatmaps.
    kp_detector.kp.weight.mul_(0.4 / logits.std())
    kp_detector.kp.bias.zero_()
    kp_detector.jacobian.weight.normal_(generator=rng)
    _, jac_maps = kp_detector.heads(images)
    jac_maps = jac_maps - kp_detector.jacobian.bias.view(1, -1, 1, 1)
    kp_detector.jacobian.weight.mul_(0.3 / jac_maps.std())  # Jacobians ≈ I ± 0.3: invertible, not trivial

    _randomize_norms(generator, rng)
    kp = kp_detector(images)
    kp_flipped = kp_detector(images.flip(0))
    _calibrate(generator, lambda: generator(images, kp_driving=kp_flipped, kp_source=kp))
    # Random unit-gain layers make the prediction chaotic in the flow: a 1-ulp change of the flow
    # moved it by ~4e-5, hiding real parity errors. Damping the encoder features and the residual
    # branches keeps outputs varied (prediction ~0.35–0.6 on photos) with ulp noise near 1e-6.
    generator.down_blocks[-1].norm.weight.mul_(0.25)
    generator.down_blocks[-1].norm.bias.mul_(0.25)
    for block in generator.bottleneck:
        block.conv2.weight.mul_(0.5)
        block.conv2.bias.mul_(0.5)
    return kp_detector.eval(), generator.eval()


def save_random_checkpoint(path: str | Path, seed: int = 0) -> Path:
    """Write random weights in the official top-level layout (see module docstring)."""
    path = Path(path)
    kp_detector, generator = random_networks(seed)
    optimizer_state = {"state": {}, "param_groups": [{"lr": 2e-4, "betas": (0.5, 0.999), "params": [0]}]}
    checkpoint = {
        "kp_detector": kp_detector.state_dict(),
        "generator": generator.state_dict(),
        "discriminator": {"discs.disc256.conv.weight": torch.zeros(1, 3, 4, 4)},
        "optimizer_generator": optimizer_state,
        "optimizer_discriminator": optimizer_state,
        "optimizer_kp_detector": optimizer_state,
        "epoch": 100,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path
