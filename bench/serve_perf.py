"""Serving many users: a real server on this machine and 1, 4, 16 simulated live clients at 30 fps.

    python bench/serve_perf.py --out DIR [--checkpoint CKPT] [--clients 1,4,16] [--seconds 10] [--transport raw]

Starts `python -m avatarify.server` (CPU unless --device cuda; random weights in the official layout
when no --checkpoint is given) and, for each client count, that many RemoteRunners, the live app's own
client (one frame in flight: a frame goes out when the last reply is in), each offering --fps frames
of a synthesized driving clip with its own avatar. Clients and server wait up to --deadline-s for a
reply (default 60 s, so slow CPU rounds are measured rather than dropped); `within_live_deadline` is
the share of replies the app's live client (1 s deadline) would have shown.

Per client count: round trip p50/p95 (frame sent → prediction received), delivered fps per client
(new predictions per second), frames refused or late, mean batch size and mean queue time (Triton's
own metrics: inferences / executions), server throughput (predictions delivered per second) and its
ratio to one client (batch 1), and payload bandwidth per user (bytes that crossed the wire; gRPC
framing adds little). Also: the server's runner alone at batch 1, 4 and 16 in this process (before the
server starts), and each transport's bytes per frame and error against the local torch runner on the
clip. Writes DIR/serve_perf.json and DIR/serve_perf.png.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import threading
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/serve_perf.py`: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from avatarify import wire  # noqa: E402
from avatarify.engines.fomm import bgr_to_network  # noqa: E402
from avatarify.engines.remote import LIVE_LATE_AFTER_S, RemoteRunner  # noqa: E402
from avatarify.stats import percentiles  # noqa: E402
from bench.clips import load_photo_bgr, make_clip  # noqa: E402
from bench.common import setup_cli_logging, write_json  # noqa: E402
from bench.serving import ServerProcess  # noqa: E402

log = logging.getLogger("serve_perf")

CLIP_FRAMES = 30
STRENGTH = 1.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for serve_perf.json and serve_perf.png")
    parser.add_argument("--checkpoint", type=Path, default=None, help="FOMM checkpoint (default: random weights)")
    parser.add_argument("--clients", default="1,4,16", help="client counts, comma-separated (default: 1,4,16)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per client count, at least")
    parser.add_argument("--min-replies", type=int, default=3,
                        help="the window stays open until every client has this many replies (default: 3)")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="longest window per client count")
    parser.add_argument("--fps", type=float, default=30.0, help="frames each client offers per second")
    parser.add_argument("--transport", choices=wire.TRANSPORTS, default="raw")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--batches", default="1,4,16", help="batch sizes for the network-alone timing")
    parser.add_argument("--deadline-s", type=float, default=60.0,
                        help="how long a reply may take before the frame counts as dropped (default: 60)")
    return parser.parse_args(argv)


def driving_frames() -> list[np.ndarray]:
    frames, _ = make_clip("astronaut", "mixed", frames=CLIP_FRAMES, size=256)
    return [bgr_to_network(frame) for frame in frames]


def avatars() -> list[np.ndarray]:
    return [bgr_to_network(load_photo_bgr(name)) for name in ("grace_hopper", "astronaut")]


def network_alone(runner, batch_sizes: list[int], frames: list[np.ndarray]) -> dict:
    """ms per frame of the server's runner at each batch size, in this process (no serving)."""
    source = runner.source_state(frames[0])
    state = (source, runner.calibration_state(source, frames[0]))
    result = {"runner": runner.providers[0]}
    for batch in batch_sizes:
        driving = np.concatenate([frames[i % len(frames)] for i in range(batch)])
        runner.animate_batch(driving, [state] * batch, [STRENGTH] * batch)  # warm-up at this shape
        times = []
        for _ in range(3):
            start = time.perf_counter()
            runner.animate_batch(driving, [state] * batch, [STRENGTH] * batch)
            times.append((time.perf_counter() - start) * 1000.0 / batch)
        result[f"batch_{batch}_ms_per_frame"] = round(float(np.median(times)), 2)
        log.info("network alone, batch %d: %.1f ms per frame", batch, result[f"batch_{batch}_ms_per_frame"])
    first = result[f"batch_{batch_sizes[0]}_ms_per_frame"]
    result["speedup_vs_batch_1"] = {str(b): round(first / result[f"batch_{b}_ms_per_frame"], 2) for b in batch_sizes}
    return result


def transport_costs(server: ServerProcess, token: str, frames: list[np.ndarray], local) -> dict:
    """Per transport: payload bytes per frame each way, and the prediction's error against local torch."""
    costs = {}
    avatar = avatars()[0]
    local.prepare_source(avatar)
    local.set_neutral(frames[0])
    expected = [local.animate(frame, STRENGTH) for frame in frames[:8]]
    for transport in wire.TRANSPORTS:
        runner = RemoteRunner(server.address, token, transport, wait_for_reply=True, late_after_s=60.0)
        runner.prepare_source(avatar)
        runner.set_neutral(frames[0])
        errors = [np.abs(runner.animate(frame, STRENGTH) - want) for frame, want in zip(frames, expected)]
        replies = len(runner.rtt_ms)
        costs[transport] = {
            "up_bytes_per_frame": round(runner.bytes_sent / max(replies, 1)),
            "down_bytes_per_frame": round(runner.bytes_received / max(replies, 1)),
            "mbit_s_per_user_at_30fps": round((runner.bytes_sent + runner.bytes_received) / max(replies, 1)
                                              * 30 * 8 / 1e6, 2),
            "error_vs_local_torch": {"max_abs": float(max(e.max() for e in errors)),
                                     "mean_abs": float(np.mean([e.mean() for e in errors]))}}
        runner.close()
        log.info("transport %s: %s", transport, costs[transport])
    return costs


class SimulatedClient:
    """One live user: a RemoteRunner fed a frame every 1/fps seconds from its own thread."""

    def __init__(self, server: ServerProcess, token: str, transport: str, avatar: np.ndarray,
                 deadline_s: float) -> None:
        self.runner = RemoteRunner(server.address, token, transport, late_after_s=deadline_s)
        self.runner.prepare_source(avatar)
        self.offered = 0

    def run(self, frames: list[np.ndarray], fps: float, stop: threading.Event, phase: float) -> None:
        next_tick = time.perf_counter() + phase
        while not stop.is_set():
            time.sleep(max(0.0, next_tick - time.perf_counter()))
            self.runner.animate(frames[self.offered % len(frames)], STRENGTH)
            self.offered += 1
            next_tick += 1.0 / fps

    @property
    def replies(self) -> int:
        return len(self.runner.rtt_ms)

    def counters(self) -> np.ndarray:
        r = self.runner
        return np.array([len(r.rtt_ms), r.late_replies, r.bytes_sent, r.bytes_received])


TRITON_COUNTERS = ("nv_inference_count", "nv_inference_exec_count", "nv_inference_queue_duration_us",
                   "nv_inference_request_success")


def wait_for(condition, limit_s: float) -> None:
    deadline = time.perf_counter() + limit_s
    while not condition() and time.perf_counter() < deadline:
        time.sleep(0.1)


def measure_level(server: ServerProcess, token: str, args: argparse.Namespace, clients: int,
                  frames: list[np.ndarray]) -> dict:
    """The clients run without pause; the window opens once each has its first reply and closes after
    --seconds once each has --min-replies more (a slow CPU needs more than --seconds for that)."""
    pictures = avatars()
    users = [SimulatedClient(server, token, args.transport, pictures[i % len(pictures)], args.deadline_s)
             for i in range(clients)]
    stop = threading.Event()
    threads = [threading.Thread(target=u.run, args=(frames, args.fps, stop, i / (args.fps * clients)))
               for i, u in enumerate(users)]
    for thread in threads:
        thread.start()
    wait_for(lambda: all(u.replies >= 1 for u in users), args.deadline_s)  # first replies come slower
    triton_before = {name: server.metric(name, wire.ANIMATE) for name in TRITON_COUNTERS}
    counters_before = [u.counters() for u in users]
    start = time.perf_counter()
    wait_for(lambda: time.perf_counter() - start >= args.seconds
             and all(u.replies - c[0] >= args.min_replies for u, c in zip(users, counters_before)),
             args.max_seconds)
    elapsed = time.perf_counter() - start
    counters = [u.counters() - c for u, c in zip(users, counters_before)]
    rtts = np.concatenate([np.asarray(u.runner.rtt_ms)[int(c[0]):] for u, c in zip(users, counters_before)])
    stop.set()
    for thread in threads:
        thread.join()
    time.sleep(2.5)  # Triton refreshes its metrics every 2 s
    delta = {name: server.metric(name, wire.ANIMATE) - triton_before[name] for name in TRITON_COUNTERS}
    for user in users:
        user.runner.close()
    replies = np.array([c[0] for c in counters], dtype=float)
    delivered = replies / elapsed
    up, down = sum(c[2] for c in counters), sum(c[3] for c in counters)
    result = {
        "clients": clients,
        "seconds": round(elapsed, 2),
        "offered_fps_per_client": args.fps,
        "rtt_ms": percentiles(rtts) if len(rtts) else {"p50": None, "p95": None},
        "within_live_deadline": round(float(np.mean(rtts <= LIVE_LATE_AFTER_S * 1000.0)), 3) if len(rtts) else None,
        "delivered_fps_per_client": {"mean": round(float(delivered.mean()), 2),
                                     "min": round(float(delivered.min()), 2)},
        "late_or_refused_frames": int(sum(c[1] for c in counters)),
        "disconnects": sum(u.runner.disconnects for u in users),
        "server_throughput_fps": round(float(replies.sum()) / elapsed, 2),
        "mean_batch_size": round(delta["nv_inference_count"] / max(delta["nv_inference_exec_count"], 1), 2),
        "mean_queue_ms": round(delta["nv_inference_queue_duration_us"] / 1000.0
                               / max(delta["nv_inference_request_success"], 1), 1),
        "payload_mbit_s_per_user": {"up": round(up * 8 / 1e6 / elapsed / clients, 2),
                                    "down": round(down * 8 / 1e6 / elapsed / clients, 2)},
    }
    log.info("%d clients: %s", clients, result)
    return result


def chart(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = results["levels"]
    clients = [lv["clients"] for lv in levels]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    axes[0].plot(clients, [lv["rtt_ms"]["p50"] for lv in levels], "o-", label="p50")
    axes[0].plot(clients, [lv["rtt_ms"]["p95"] for lv in levels], "s--", label="p95")
    axes[0].set(title="round trip (ms)", xlabel="clients", xscale="log")
    axes[0].legend()
    axes[1].plot(clients, [lv["delivered_fps_per_client"]["mean"] for lv in levels], "o-", label="delivered")
    axes[1].axhline(results["offered_fps_per_client"], color="gray", ls=":", label="offered")
    axes[1].set(title="fps per client", xlabel="clients", xscale="log", yscale="log")
    axes[1].legend()
    axes[2].plot(clients, [lv["mean_batch_size"] for lv in levels], "o-", label="mean batch size")
    axes[2].plot(clients, [lv["throughput_vs_1_client"] for lv in levels], "s--", label="throughput / 1 client")
    axes[2].set(title="server", xlabel="clients", xscale="log")
    axes[2].legend()
    for axis in axes:
        axis.set_xticks(clients, [str(c) for c in clients])
        axis.grid(alpha=0.3)
    fig.suptitle(f"avatarify server on {results['runner']} ({results['transport']} transport)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    log.info("wrote %s", path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_cli_logging()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="serve_perf_"))
    checkpoint = args.checkpoint
    if checkpoint is None:
        from models.fomm.checkpoint import save_random_checkpoint

        checkpoint = save_random_checkpoint(work / "fomm-random.pth.tar", seed=0)
    from avatarify.server import build_runner

    frames = driving_frames()
    runner = build_runner(checkpoint, args.device, "auto")  # what the server will run
    alone = network_alone(runner, [int(b) for b in args.batches.split(",")], frames)

    server = ServerProcess(checkpoint, work / "server.token", args.out / "server.log",
                           "--queue-timeout-ms", str(int(args.deadline_s * 1000)),
                           *(["--device", "cuda"] if args.device == "cuda" else []))
    started = time.perf_counter()
    server.start()
    results = {"runner": alone["runner"], "transport": args.transport, "offered_fps_per_client": args.fps,
               "server_start_s": round(time.perf_counter() - started, 1), "network_alone": alone,
               "gpu": "not measured (no GPU in this run)" if args.device == "cpu" else "see levels"}
    try:
        token = wire.read_token(work / "server.token")
        results["transports"] = transport_costs(server, token, frames, runner)
        results["levels"] = [measure_level(server, token, args, int(n), frames) for n in args.clients.split(",")]
    finally:
        server.stop()
    base = results["levels"][0]["server_throughput_fps"] or 1.0
    for level in results["levels"]:
        level["throughput_vs_1_client"] = round(level["server_throughput_fps"] / base, 2)
    write_json(args.out / "serve_perf.json", results)
    chart(results, args.out / "serve_perf.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
