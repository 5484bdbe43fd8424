"""Backend choice: candidates from injected machines, the choice from injected timings, the idle-GPU
warning, the GPU seen by the driver, the timing cache, and --backend auto end to end on this CPU."""
from __future__ import annotations

import functools
import json
import logging
import os
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from avatarify.backends import (ORT_CUDA_LIBRARIES_FIX, REQUIREMENTS_GPU_FIX, TIMINGS_FILE, BackendError, Built,
                                Candidate, CandidateFailed, Machine, build_fomm_animator, candidates_for,
                                choose_backend, cpu_flags, cpu_model, driver_gpus, has_native_bf16, idle_gpu_warning,
                                read_timings, select_backend, time_frames, timing_key, write_timings)
from avatarify.config import Settings
from avatarify.engines.base import AnimatorError

# A laptop as users have it: CUDA torch absent (CPU wheel), the CPU onnxruntime, an NVIDIA GPU in it.
CPU_ONLY = Machine(torch_version="2.13.0+cpu", torch_cuda=False, ort_package="onnxruntime 1.23.2",
                   ort_providers=("AzureExecutionProvider", "CPUExecutionProvider"), tensorrt=None,
                   native_bf16=True, gpus=(), cpu="Test CPU", cpu_flags=("avx512_bf16", "avx512f"), threads=2)
GPU_IDLE = replace(CPU_ONLY, gpus=("NVIDIA H200",))
ORT_GPU = replace(CPU_ONLY, ort_package="onnxruntime-gpu 1.23.2", gpus=("NVIDIA H200",),
                  ort_providers=("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"))
ALL_GPU = replace(ORT_GPU, torch_version="2.13.0+cu130", torch_cuda=True, tensorrt="10.13.0")


def _runs(candidates: list[Candidate]) -> list[str]:
    return [c.label for c in candidates if c.available]


def _with_ms(candidates: list[Candidate], **ms: float) -> list[Candidate]:
    for candidate in candidates:
        candidate.ms = ms.get(candidate.kind.replace("-", "_"))
    return candidates


# --- candidates and the choice (pure) ------------------------------------------------------------


def test_candidates_follow_the_machine_and_the_flags():
    assert _runs(candidates_for(CPU_ONLY)) == ["torch-cpu-bf16", "torch-cpu-fp32", "onnxruntime-cpu-fp32"]
    assert _runs(candidates_for(replace(CPU_ONLY, native_bf16=False))) == ["torch-cpu-fp32", "onnxruntime-cpu-fp32"]
    assert _runs(candidates_for(ALL_GPU)) == ["tensorrt-fp16", "onnxruntime-tensorrt-fp16", "onnxruntime-cuda-fp32",
                                              "torch-cuda-fp16", "torch-cpu-bf16", "torch-cpu-fp32",
                                              "onnxruntime-cpu-fp32"]
    assert _runs(candidates_for(ALL_GPU, device="cpu")) == ["torch-cpu-bf16", "torch-cpu-fp32",
                                                            "onnxruntime-cpu-fp32"]
    # An explicit --backend torch is not timed: fp32 first, bf16 first only where AMX makes it fast.
    assert _runs(candidates_for(CPU_ONLY, backend="torch")) == ["torch-cpu-fp32", "torch-cpu-bf16"]
    amx = replace(CPU_ONLY, cpu_flags=("amx_bf16", "avx512_bf16"))
    assert _runs(candidates_for(amx, backend="torch")) == ["torch-cpu-bf16", "torch-cpu-fp32"]
    assert _runs(candidates_for(ALL_GPU, device="cuda", precision="fp32")) == [
        "tensorrt-fp32", "onnxruntime-tensorrt-fp32", "onnxruntime-cuda-fp32", "torch-cuda-fp32"]
    assert _runs(candidates_for(ALL_GPU, backend="torch", precision="bf16")) == ["torch-cuda-bf16", "torch-cpu-bf16"]
    assert _runs(candidates_for(ALL_GPU, precision="fp16")) == ["tensorrt-fp16", "onnxruntime-tensorrt-fp16",
                                                                "torch-cuda-fp16"]
    missing = {c.kind: c.why for c in candidates_for(CPU_ONLY)}
    assert missing["onnxruntime-cuda"] == "onnxruntime 1.23.2 has no CUDA provider"
    assert "a CPU build of torch" in missing["torch-cuda"] and missing["tensorrt"] == "TensorRT is not installed"


@pytest.mark.parametrize("flags, expected", [
    ({"backend": "torch", "device": "cpu", "precision": "fp16"}, "--precision fp16 needs a CUDA GPU"),
    ({"backend": "onnxruntime", "precision": "bf16"}, "bf16 runs only on the torch backend"),
    ({"backend": "tensorrt"}, "TensorRT is not installed"),
    ({"device": "cuda"}, "torch 2.13.0+cpu sees no CUDA GPU"),
])
def test_nothing_to_run_is_one_sentence_naming_the_reason(flags, expected):
    with pytest.raises(BackendError) as error:
        choose_backend(candidates_for(CPU_ONLY, **flags))
    message = str(error.value)
    assert expected in message and "\n" not in message and not message.count("--device cpu keeps")


def test_choice_takes_the_fastest_timed_path_of_the_cpu():
    assert choose_backend(_with_ms(candidates_for(CPU_ONLY), torch_cpu=112.0, onnxruntime_cpu=251.0)) \
        .candidate.label == "torch-cpu-bf16"
    choice = choose_backend(_with_ms(candidates_for(CPU_ONLY), torch_cpu=300.0, onnxruntime_cpu=251.0))
    assert choice.candidate.label == "onnxruntime-cpu-fp32"
    assert "fastest CPU path" in choice.reason and "torch-cpu-bf16 300.0 ms" in choice.reason
    untimed = choose_backend(candidates_for(CPU_ONLY))  # without timings the preference order decides
    assert untimed.candidate.label == "torch-cpu-bf16" and "not timed" in untimed.reason


def test_any_gpu_path_beats_the_cpu_and_the_gpu_paths_are_timed_among_themselves():
    candidates = _with_ms(candidates_for(ALL_GPU), tensorrt=2.4, onnxruntime_tensorrt=2.0, onnxruntime_cuda=5.0,
                          torch_cuda=2.7, torch_cpu=0.5, onnxruntime_cpu=0.4)
    assert choose_backend(candidates).candidate.label == "onnxruntime-tensorrt-fp16"
    only_torch = replace(CPU_ONLY, torch_version="2.13.0+cu130", torch_cuda=True)
    choice = choose_backend(_with_ms(candidates_for(only_torch), torch_cpu=0.5))
    assert choice.candidate.label == "torch-cuda-fp16" and choice.reason == "the only GPU path that runs here"
    assert choose_backend(candidates_for(ALL_GPU)).candidate.label == "tensorrt-fp16"  # untimed: the order


# --- an idle GPU is never silent -----------------------------------------------------------------------


def test_idle_gpu_warning_names_the_gpu_what_runs_and_the_pip_fix():
    candidates = candidates_for(GPU_IDLE)
    chosen = choose_backend(candidates).candidate
    warning = idle_gpu_warning(chosen, candidates, GPU_IDLE.gpus)
    assert warning.startswith("The NVIDIA GPU (NVIDIA H200) sits idle: FOMM runs on the CPU (torch-cpu-bf16)")
    assert "onnxruntime 1.23.2 has no CUDA provider" in warning and warning.endswith("Fix: " + REQUIREMENTS_GPU_FIX)
    assert "\n" not in warning
    assert idle_gpu_warning(chosen, candidates, GPU_IDLE.gpus, device_flag="cpu") is None  # asked for the CPU
    assert idle_gpu_warning(chosen, candidates_for(CPU_ONLY), CPU_ONLY.gpus) is None  # no GPU in the machine
    on_gpu = candidates_for(ALL_GPU)
    assert idle_gpu_warning(choose_backend(on_gpu).candidate, on_gpu, ALL_GPU.gpus) is None


def test_a_cuda_provider_that_does_not_load_falls_back_to_the_cpu_with_the_libraries_fix():
    """onnxruntime-gpu lists CUDA, but the session gets only the CPU: the candidate is ruled out when
    built, the choice falls to the CPU tier, and the warning names the CUDA/cuDNN wheels."""
    candidates = candidates_for(replace(ORT_GPU, ort_providers=("CUDAExecutionProvider", "CPUExecutionProvider")))
    built = []

    def build(candidate: Candidate) -> Built:
        built.append(candidate.label)
        if candidate.kind == "onnxruntime-cuda":
            raise CandidateFailed("the onnxruntime session runs on CPUExecutionProvider, not CUDAExecutionProvider",
                                  ORT_CUDA_LIBRARIES_FIX)
        return Built(runner=candidate.label)

    choice, chosen, timed = select_backend(candidates, build, time_steps=None)
    assert choice.candidate.label == "torch-cpu-bf16" and chosen.runner == "torch-cpu-bf16" and not timed
    assert built == ["onnxruntime-cuda-fp32", "torch-cpu-bf16"]
    warning = idle_gpu_warning(choice.candidate, candidates, ORT_GPU.gpus)
    assert "runs on CPUExecutionProvider" in warning and warning.endswith("Fix: " + ORT_CUDA_LIBRARIES_FIX)


def test_driver_gpus_from_proc_and_from_nvidia_smi(tmp_path, monkeypatch):
    proc = tmp_path / "gpus" / "0000:3b:00.0"
    proc.mkdir(parents=True)
    (proc / "information").write_text("Model: \t\t NVIDIA H200\nIRQ:   140\nGPU UUID: GPU-1\n")
    assert driver_gpus(tmp_path / "gpus", smi="no-such-tool") == ["NVIDIA H200"]
    smi = tmp_path / "bin" / "nvidia-smi"
    smi.parent.mkdir()
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA GeForce RTX 4090 (UUID: GPU-0c1d)'\n")
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{smi.parent}{os.pathsep}{os.environ['PATH']}")
    assert driver_gpus(tmp_path / "absent", smi="nvidia-smi") == ["NVIDIA GeForce RTX 4090"]
    assert driver_gpus(tmp_path / "absent", smi="no-such-tool") == []


# /proc/cpuinfo of CPUs this was reported on: an AMD EPYC (Zen 3) has no AVX-512 at all, so torch's
# bf16 convolution refuses to run; a Skylake Xeon has AVX-512 without bf16, which oneDNN emulates.
ZEN3 = ("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13 64-Core Processor\n"
        "flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma f16c bmi1 bmi2 sha_ni vaes vpclmulqdq\n")
SKYLAKE = ("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Gold 6148 CPU\n"
           "flags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512dq avx512cd avx512bw avx512vl\n")


def _fake_cpu(monkeypatch, cpuinfo: str) -> Machine:
    """This machine with another CPU's flags: the one function that reads them is replaced, and
    torch's own bf16 check (which reads this machine, not the fake) is left to those flags."""
    flags, model = cpu_flags, cpu_model
    monkeypatch.setattr("avatarify.backends.cpu_flags", lambda text=None: flags(cpuinfo if text is None else text))
    monkeypatch.setattr("avatarify.backends.cpu_model", lambda text=None: model(cpuinfo if text is None else text))
    monkeypatch.setattr("avatarify.backends.torch_bf16_supported", lambda: True)
    return Machine.detect()


def test_bf16_where_the_cpu_cannot_run_it_is_refused_in_one_line_and_never_chosen(monkeypatch, fomm_checkpoint,
                                                                                   tmp_path):
    from avatarify.runners import RunnerError, TorchRunner
    from models.fomm.checkpoint import load_fomm

    machine = _fake_cpu(monkeypatch, ZEN3)
    assert not machine.bf16_runs and not machine.native_bf16
    assert not [c for c in candidates_for(machine) if c.precision == "bf16"]  # --backend auto: fp32 only
    assert _runs(candidates_for(machine, backend="torch")) == ["torch-cpu-fp32"]
    (bf16,) = [c for c in candidates_for(machine, backend="torch", precision="bf16") if c.kind == "torch-cpu"]
    assert not bf16.available and "AVX-512" in bf16.why and bf16.why.endswith("use --precision fp32")
    junk = tmp_path / "junk.pth.tar"
    junk.write_bytes(b"not a checkpoint")  # never read: the flags are refused first
    with pytest.raises(AnimatorError, match="bf16 needs a CPU with AVX-512") as error:
        build_fomm_animator(Settings(backend="torch", device="cpu", precision="bf16", cache_dir=tmp_path), junk)
    assert "\n" not in str(error.value) and "--precision fp32" in str(error.value)
    assert str(error.value).startswith("FOMM cannot run with these flags here: --precision bf16")  # read first
    with pytest.raises(RunnerError, match="use --precision fp32") as error:  # the server and benches build it so
        TorchRunner(*load_fomm(fomm_checkpoint), precision="bf16")
    assert "\n" not in str(error.value)


def test_bf16_emulated_by_avx512_runs_when_asked_but_auto_keeps_fp32(monkeypatch):
    machine = _fake_cpu(monkeypatch, SKYLAKE)
    assert machine.bf16_runs and not machine.native_bf16
    assert not [c for c in candidates_for(machine) if c.precision == "bf16"]
    assert _runs(candidates_for(machine, backend="torch", precision="bf16")) == ["torch-cpu-bf16"]


def test_native_bf16_comes_from_the_cpu_flags():
    amx = "processor\t: 0\nflags\t\t: fpu sse4_2 avx512f amx_bf16 amx_tile\n"
    assert has_native_bf16(cpu_flags(amx)) and has_native_bf16(["avx512_bf16"])
    assert not has_native_bf16(cpu_flags("flags\t\t: fpu avx2 avx512f avx512bw\n"))
    assert cpu_flags("no flags here") == ()


# --- timing and its cache ------------------------------------------------------------------------------


def test_time_frames_interleaves_the_paths_and_takes_medians():
    calls, now = [], [0.0]
    costs = {"a": [5, 5, 9, 1, 5, 5, 5], "b": [2, 2, 2, 2, 2, 40, 2]}

    def step(name):
        def run():
            calls.append(name)
            now[0] += costs[name].pop(0) / 1000.0
        return run

    ms = time_frames({"a": step("a"), "b": step("b")}, warmup=1, min_rounds=6, max_rounds=6, clock=lambda: now[0])
    assert calls == ["a", "b"] * 7  # one warm-up each... then turns
    assert ms == pytest.approx({"a": 5.0, "b": 2.0})


def test_timing_cache_hits_for_the_same_key_and_misses_when_it_changes(tmp_path):
    path = tmp_path / TIMINGS_FILE
    key = timing_key(CPU_ONLY, 256)
    assert read_timings(path, key) == {}  # no file yet
    write_timings(path, key, {"torch-cpu-bf16": 112.0, "onnxruntime-cpu-fp32": 251.0})
    assert read_timings(path, key) == {"torch-cpu-bf16": 112.0, "onnxruntime-cpu-fp32": 251.0}
    for changed in (replace(CPU_ONLY, torch_version="2.14.0+cpu"), replace(CPU_ONLY, cpu="Other CPU"),
                    replace(CPU_ONLY, gpus=("NVIDIA H200",)), replace(CPU_ONLY, ort_package="onnxruntime-gpu 1.23.2")):
        assert read_timings(path, timing_key(changed, 256)) == {}
    assert read_timings(path, timing_key(CPU_ONLY, 512)) == {}
    write_timings(path, timing_key(CPU_ONLY, 512), {"torch-cpu-bf16": 130.0})  # another key, same file
    write_timings(path, key, {"onnxruntime-cpu-fp32": 240.0})  # a merge into the entry
    assert read_timings(path, key) == {"torch-cpu-bf16": 112.0, "onnxruntime-cpu-fp32": 240.0}
    assert len(json.loads(path.read_text())["entries"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [TIMINGS_FILE]  # no temporary file left
    path.write_text("{ not json")
    assert read_timings(path, key) == {}


def test_select_backend_times_on_a_miss_and_builds_only_the_winner_on_a_hit():
    built, timed, stored = [], [], {}

    def build(candidate):
        built.append(candidate.label)
        return Built(runner=candidate.label)

    def time_steps(paths):
        timed.append(sorted(paths))
        return {"torch-cpu-bf16": 112.0, "torch-cpu-fp32": 202.0, "onnxruntime-cpu-fp32": 251.0}

    choice, chosen, timed_now = select_backend(candidates_for(CPU_ONLY), build, time_steps, {}, stored.update)
    assert choice.candidate.label == "torch-cpu-bf16" and chosen.runner == "torch-cpu-bf16" and timed_now
    assert timed == [["onnxruntime-cpu-fp32", "torch-cpu-bf16", "torch-cpu-fp32"]]
    assert sorted(built) == sorted(timed[0])
    assert stored == {"torch-cpu-bf16": 112.0, "torch-cpu-fp32": 202.0, "onnxruntime-cpu-fp32": 251.0}

    built.clear()
    choice, _, timed_now = select_backend(candidates_for(CPU_ONLY), build, time_steps,
                                          {"torch-cpu-bf16": 300.0, "torch-cpu-fp32": 260.0,
                                           "onnxruntime-cpu-fp32": 251.0})
    assert choice.candidate.label == "onnxruntime-cpu-fp32" and choice.candidate.ms == 251.0
    assert built == ["onnxruntime-cpu-fp32"] and not timed_now and len(timed) == 1


# --- --backend auto end to end on this CPU (real runners, real timing, real cache) --------------------


def test_backend_auto_times_once_then_reuses_the_cached_timing(fomm_checkpoint, fomm_cache_dir, onnx_dir, caplog,
                                                               monkeypatch):
    (onnx_dir / TIMINGS_FILE).unlink(missing_ok=True)
    # The real timing of the real paths, shortened to one warm-up and one timed round each.
    monkeypatch.setattr("avatarify.backends.time_frames",
                        functools.partial(time_frames, warmup=1, min_rounds=1, max_rounds=1))
    settings = Settings(checkpoint=fomm_checkpoint, cache_dir=fomm_cache_dir)
    with caplog.at_level(logging.INFO):
        first = build_fomm_animator(settings, Path(fomm_checkpoint))
    assert "Timing torch-cpu-" in caplog.text and (onnx_dir / TIMINGS_FILE).is_file()
    info = first.backend_info()
    assert info["device"] == "cpu" and info["ms_per_frame"] > 0 and "fastest CPU path" in info["choice"]
    line = next(r.message for r in caplog.records if r.message.startswith("FOMM runs on"))
    assert info["candidate"] in line and "ms per frame" in line
    timings = read_timings(onnx_dir / TIMINGS_FILE, timing_key(Machine.detect(), 256))
    cpu_paths = 3 if Machine.detect().native_bf16 else 2  # torch bf16 and fp32 where bf16 is native
    assert len(timings) == cpu_paths and info["candidate"] in timings  # all CPU paths timed, cached
    assert info["ms_per_frame"] == pytest.approx(min(timings.values()), abs=0.01)

    caplog.clear()
    with caplog.at_level(logging.INFO):
        second = build_fomm_animator(settings, Path(fomm_checkpoint))
    assert "Timing" not in caplog.text and "timings cached in" in caplog.text
    assert second.backend_info()["candidate"] == info["candidate"]


def test_explicit_backend_errors_before_loading_anything(tmp_path):
    junk = tmp_path / "junk.pth.tar"
    junk.write_bytes(b"not a checkpoint")  # never read: the flags are refused first
    with pytest.raises(AnimatorError, match="needs a CUDA GPU"):
        build_fomm_animator(Settings(backend="torch", device="cpu", precision="fp16", cache_dir=tmp_path), junk)


def test_the_app_warns_once_when_a_gpu_sits_idle_and_reports_it(fomm_checkpoint, fomm_cache_dir, onnx_dir,
                                                                 monkeypatch, caplog):
    """This CPU machine made to look like a laptop with an idle NVIDIA GPU (the driver sees it, torch
    and onnxruntime are CPU builds): one warning line with the pip fix; backend_info carries the note."""
    real = Machine.detect()
    monkeypatch.setattr(Machine, "detect", classmethod(lambda cls: replace(real, gpus=("NVIDIA H200",))))
    settings = Settings(checkpoint=fomm_checkpoint, cache_dir=fomm_cache_dir, backend="onnxruntime")
    with caplog.at_level(logging.INFO):
        animator = build_fomm_animator(settings, Path(fomm_checkpoint))
    warnings = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "The NVIDIA GPU (NVIDIA H200) sits idle" in warnings[0]
    assert warnings[0].endswith("Fix: " + REQUIREMENTS_GPU_FIX)
    info = animator.backend_info()
    assert info["providers"] == ["CPUExecutionProvider"] and info["device"] == "cpu"
    assert info["note"] == "GPU idle: NVIDIA H200"


def test_check_command_prints_a_real_sessions_providers():
    import subprocess
    import sys

    from conftest import ROOT

    result = subprocess.run([sys.executable, "-m", "avatarify.backends"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "a real session's providers: ['CPUExecutionProvider']" in result.stdout
    assert "onnxruntime-cpu-fp32" in result.stdout and "can run" in result.stdout
