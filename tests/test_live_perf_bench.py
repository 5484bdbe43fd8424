"""bench/live_perf.py's --camera handling: which videos run, under which names, and the medians it
reports per driver. No video is decoded here (the real drivers stay out of the tests)."""
from __future__ import annotations

from pathlib import Path

import pytest

from bench.live_perf import (driver_names, median_stages, parse_args, real_videos, recording_at_camera_pace,
                             recording_cost)


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_a_folder_means_its_videos_in_name_order_and_files_stay_as_given(tmp_path):
    folder = tmp_path / "drivers"
    b, a = _touch(folder / "b.mp4"), _touch(folder / "a.MOV")
    _touch(folder / "README.md")  # not a video
    single = _touch(tmp_path / "other" / "c.avi")
    assert real_videos([folder, single]) == [a, b, single]


def test_a_missing_path_or_a_folder_without_videos_ends_in_one_line(tmp_path):
    with pytest.raises(SystemExit, match="no such file"):
        real_videos([tmp_path / "missing.mp4"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no video"):
        real_videos([tmp_path / "empty"])


def test_driver_names_are_stems_and_repeated_stems_keep_their_folder(tmp_path):
    videos = [tmp_path / "x" / "d6.mp4", tmp_path / "y" / "d6.mp4", tmp_path / "x" / "d12.mp4"]
    assert driver_names(videos) == ["x_d6", "y_d6", "d12"]


def test_camera_is_repeatable_and_kept_to_the_mesh_engine(tmp_path):
    args = parse_args(["--out", str(tmp_path), "--camera", "a.mp4", "--camera", "dir"])
    assert args.camera == [Path("a.mp4"), Path("dir")]
    with pytest.raises(SystemExit):
        parse_args(["--out", str(tmp_path), "--engine", "fomm", "--camera", "a.mp4"])


def test_stage_medians_over_runs_keep_the_first_runs_order():
    runs = [{"stages_ms": {"detect": {"p50": 5.0, "p95": 6.0}, "animate": {"p50": 7.0, "p95": 9.0}}},
            {"stages_ms": {"detect": {"p50": 4.0, "p95": 8.0}, "animate": {"p50": 8.0, "p95": 8.0}}},
            {"stages_ms": {"detect": {"p50": 6.0, "p95": 7.0}, "animate": {"p50": 9.0, "p95": 10.0}}}]
    medians = median_stages(runs)
    assert list(medians) == ["detect", "animate"]
    assert medians == {"detect": {"p50": 5.0, "p95": 7.0}, "animate": {"p50": 8.0, "p95": 9.0}}


def test_recording_cost_is_the_ratio_of_medians_within_the_same_rounds():
    def stats(fps, frames=300):
        return {"fps": fps, "frames": frames, "latency_ms": {"p95": 1000 / fps}}

    plain = [stats(80.0), stats(90.0), stats(70.0)]
    cost = recording_cost(plain, [stats(72.0), stats(85.0), stats(60.0)])
    assert cost["fps_ratio"] == 0.9 and cost["met"] and cost["frames_as_plain"]
    assert cost["fps_ratio_runs"] == [0.9, 0.944, 0.857]
    short = recording_cost(plain, [stats(71.0), stats(85.0), stats(60.0, frames=299)])
    assert not short["met"] and not short["frames_as_plain"]


def test_recording_at_the_camera_pace_compares_one_paced_run_with_one_recorded():
    def stats(fps, dropped, p95):
        return {"fps": fps, "frames": 300 - dropped, "dropped_frames": dropped,
                "latency_ms": {"p50": p95 / 2, "p95": p95}}

    pace = recording_at_camera_pace(stats(30.0, 0, 14.0), stats(29.9, 1, 16.5))
    assert pace["met"] and pace["fps_ratio"] == 0.997
    assert (pace["dropped_frames_plain"], pace["dropped_frames"]) == (0, 1)
    assert (pace["latency_p95_ms_plain"], pace["latency_p95_ms"]) == (14.0, 16.5)
    assert not recording_at_camera_pace(stats(30.0, 0, 14.0), stats(25.0, 50, 40.0))["met"]
