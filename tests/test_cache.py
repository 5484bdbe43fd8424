"""The ONNX cache heals itself: two runs exporting at once into an empty cache both succeed, a damaged
file is detected by its manifest (size, sha256) and the cache is rebuilt with one log line."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import threading

import pytest

from export.onnx_export import ExportError, _writable_dir, cache_problem, cached_export, file_sha256
from conftest import ROOT

EXPORT_SCRIPT = textwrap.dedent("""
    import logging, sys
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    from export.onnx_export import cached_export
    print(cached_export(sys.argv[1], sys.argv[2], progress=False, unfused_frame=False))
""")


@pytest.fixture(scope="module")
def two_runs(fomm_checkpoint, tmp_path_factory):
    """Two processes started together, exporting the same checkpoint into one empty cache."""
    root = tmp_path_factory.mktemp("shared_cache")
    runs = [subprocess.Popen([sys.executable, "-c", EXPORT_SCRIPT, str(fomm_checkpoint), str(root)], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(run.wait(timeout=600), *run.communicate()) for run in runs]
    return root, results


def test_two_runs_on_an_empty_cache_both_succeed_and_export_once(two_runs, fomm_checkpoint):
    root, results = two_runs
    for code, _, stderr in results:
        assert code == 0 and "Traceback" not in stderr, stderr
    folders = {stdout.strip() for _, stdout, _ in results}
    assert len(folders) == 1
    stderrs = " ".join(stderr for _, _, stderr in results)
    assert stderrs.count("First run with this checkpoint") == 1 and stderrs.count("Reusing the ONNX export") == 1
    out = root / folders.pop().rsplit("/", 1)[-1]
    assert cache_problem(out, file_sha256(fomm_checkpoint), unfused_frame=False) is None
    assert [p.name for p in root.iterdir() if p.is_dir()] == [out.name]  # no temporary folder left


def test_a_changed_byte_fails_the_check(two_runs, fomm_checkpoint):
    root, results = two_runs
    out = root / results[0][1].strip().rsplit("/", 1)[-1]
    graph = out / "fomm_keypoints.onnx"
    data = bytearray(graph.read_bytes())
    original = data[len(data) // 2]
    data[len(data) // 2] = original ^ 0xFF
    graph.write_bytes(data)
    digest = file_sha256(fomm_checkpoint)
    assert cache_problem(out, digest, unfused_frame=False) == "fomm_keypoints.onnx does not match its sha256"
    data[len(data) // 2] = original
    graph.write_bytes(data)
    assert cache_problem(out, digest, unfused_frame=False) is None
    assert "lacks fomm_frame_kp.onnx" in cache_problem(out, digest, unfused_frame=True)


def test_a_truncated_file_is_rebuilt_with_one_log_line(two_runs, fomm_checkpoint, caplog):
    root, results = two_runs
    out = root / results[0][1].strip().rsplit("/", 1)[-1]
    graph = out / "fomm_frame.onnx"
    size = graph.stat().st_size
    with open(graph, "r+b") as handle:
        handle.truncate(size // 3)  # what a crash or a full disk during a copy leaves
    with caplog.at_level(logging.INFO, logger="export.onnx_export"):
        again = cached_export(fomm_checkpoint, root, progress=False, unfused_frame=False)
    assert again == out and graph.stat().st_size == size
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [f"The ONNX cache in {out} is damaged (fomm_frame.onnx is {size // 3} bytes instead of "
                        f"{size}); rebuilding it."]
    assert cache_problem(out, file_sha256(fomm_checkpoint), unfused_frame=False) is None
    assert json.loads((out / "manifest.json").read_text())["out_dir"] == str(out)


def test_runs_checking_one_folder_at_once_never_see_each_others_write_probe(tmp_path):
    """Each run checks that the cache folder is writable with a probe file. With one probe name for
    all, one run unlinked the probe another had just written, and that run stopped with "Cannot write
    to output folder ... (No such file or directory)" for a folder that was fine (seen in the
    two-runs test under load)."""
    errors = []

    def check_many_times():
        for _ in range(300):
            try:
                _writable_dir(tmp_path, "--cache-dir")
            except ExportError as exc:
                errors.append(str(exc))
                return

    threads = [threading.Thread(target=check_many_times) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert list(tmp_path.iterdir()) == []  # no probe left behind
