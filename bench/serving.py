"""A real avatarify server (`python -m avatarify.server`) in a subprocess on this machine's loopback,
for the tests and bench/serve_perf.py: free ports, readiness through Triton's own /v2/health/ready,
metrics scraped from its Prometheus endpoint, and a clean stop (SIGTERM, as Kubernetes sends).
With `tls_dir`, gRPC is served over TLS by Triton itself (PyTriton reads PYTRITON_TRITON_CONFIG_* from
the environment) with a self-signed certificate for 127.0.0.1 made by the openssl command, so a client
can be tested on `grpcs://` as it would talk to a TLS proxy."""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """(certificate, key) PEM files for 127.0.0.1, valid for a day; RuntimeError without openssl."""
    if shutil.which("openssl") is None:
        raise RuntimeError("the openssl command is needed to make a test certificate")
    folder.mkdir(parents=True, exist_ok=True)
    certificate, key = folder / "server.crt", folder / "server.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    f"/CN={LOOPBACK}", "-addext", f"subjectAltName=IP:{LOOPBACK}", "-keyout", str(key),
                    "-out", str(certificate)], check=True, capture_output=True, timeout=60)
    return certificate, key


def free_ports(count: int) -> list[int]:
    """Ports nobody listens on right now (the kernel picks them)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind((LOOPBACK, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class ServerProcess:
    """`python -m avatarify.server` on loopback ports; its output goes to `log_path`."""

    def __init__(self, checkpoint: Path, token_file: Path, log_path: Path, *extra: str,
                 ports: list[int] | None = None, tls_dir: Path | None = None) -> None:
        self.grpc_port, self.http_port, self.metrics_port = ports or free_ports(3)
        self.checkpoint, self.token_file, self.log_path, self.extra = checkpoint, token_file, log_path, extra
        self.process: subprocess.Popen | None = None
        self.env = dict(os.environ)
        self.certificate: Path | None = None
        if tls_dir is not None:
            self.certificate, key = self_signed_certificate(tls_dir)
            self.env.update({"PYTRITON_TRITON_CONFIG_GRPC_USE_SSL": "true",
                             "PYTRITON_TRITON_CONFIG_GRPC_SERVER_CERT": str(self.certificate),
                             "PYTRITON_TRITON_CONFIG_GRPC_SERVER_KEY": str(key)})

    @property
    def address(self) -> str:
        """HOST:PORT of the gRPC port, as tritonclient takes it."""
        return f"{LOOPBACK}:{self.grpc_port}"

    @property
    def tls(self) -> bool:
        return self.certificate is not None

    @property
    def client_address(self) -> str:
        """What `run_live.py --server` takes: grpcs://HOST:PORT with TLS."""
        return f"grpcs://{self.address}" if self.tls else self.address

    @property
    def ports(self) -> list[int]:
        return [self.grpc_port, self.http_port, self.metrics_port]

    def start(self, timeout_s: float = 180.0) -> "ServerProcess":
        command = [sys.executable, "-m", "avatarify.server", "--checkpoint", str(self.checkpoint), "--device", "cpu",
                   "--address", LOOPBACK, "--grpc-port", str(self.grpc_port), "--http-port", str(self.http_port),
                   "--metrics-port", str(self.metrics_port), "--token-file", str(self.token_file), *self.extra]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server did not become ready; its log ends with:\n{self.log_tail()}")
            time.sleep(0.5)
        return self

    def ready(self) -> bool:
        """Triton's readiness, and the model bound last loaded (between two model loads Triton says
        ready too; the Kubernetes manifests use the same pair as startup and readiness probes)."""
        return all(self._get_ok(path) for path in ("/v2/health/ready", "/v2/models/animate/ready"))

    def _get_ok(self, path: str) -> bool:
        try:
            with urllib.request.urlopen(f"http://{LOOPBACK}:{self.http_port}{path}", timeout=2) as reply:
                return reply.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{self.metrics_port}/metrics", timeout=5) as reply:
            return reply.read().decode()

    def metric(self, name: str, model: str) -> float:
        """One counter of one model from the Prometheus text (0 when Triton has not reported it yet)."""
        pattern = re.compile(rf'^{name}{{[^}}]*model="{model}"[^}}]*}} ([0-9.e+-]+)$', re.MULTILINE)
        return sum(float(v) for v in pattern.findall(self.metrics()))

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not end in time; returns the exit code."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(10)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
