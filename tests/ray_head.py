"""A separate local Ray cluster (``ray start --head``) for tests of ``ray job submit``.

It runs beside the test session's own Ray, so everything is its own: ports (including
the two Ray fixes by default), temp dir, and token file (token auth on, as on a real
cluster). Teardown never uses ``ray stop`` (that would kill every Ray on the machine):
it stops running jobs, terminates the ``ray start --block`` process group, then kills
whatever still carries this cluster's marker variable (job drivers escape the group).
Recipe and timings: docs/ray-auth-notes.md.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

VENV_BIN = Path(sys.executable).parent


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class RayHead:
    def __init__(self, workdir: Path, num_cpus: int = 4):
        self.workdir = workdir
        self.num_cpus = num_cpus
        self.marker = f"rescored-test-{uuid.uuid4().hex}"
        self.token = secrets.token_hex(32)
        self.token_file = workdir / "auth_token"
        self.gcs, self.dashboard, self.agent, self.client = free_ports(4)
        self.temp_dir = Path(f"/tmp/rr_{uuid.uuid4().hex[:8]}")  # short: Ray's socket paths must fit 107 bytes
        self.log = workdir / "ray-head.log"
        self.process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        """The dashboard / Jobs API."""
        return f"http://127.0.0.1:{self.dashboard}"

    @property
    def gcs_address(self) -> str:
        """What ``ray.init(address=...)`` connects to."""
        return f"127.0.0.1:{self.gcs}"

    def client_env(self) -> dict[str, str]:
        """What ``ray job submit`` needs to reach this head with its token."""
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
        env.update(
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN_PATH=str(self.token_file),
            PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        )
        return env

    def start(self, timeout_s: float = 90.0) -> RayHead:
        try:
            return self._start(timeout_s)
        except BaseException:
            self.stop()  # a head that never became ready must not outlive the test either
            raise

    def _start(self, timeout_s: float) -> RayHead:
        self.token_file.write_text(self.token)
        env = self.client_env()
        env.update(RESCORED_RAY_CLUSTER=self.marker, RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0")
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    str(VENV_BIN / "ray"),
                    "start",
                    "--head",
                    "--block",
                    f"--port={self.gcs}",
                    f"--dashboard-port={self.dashboard}",
                    f"--dashboard-agent-listen-port={self.agent}",
                    f"--ray-client-server-port={self.client}",
                    f"--temp-dir={self.temp_dir}",
                    f"--num-cpus={self.num_cpus}",
                    "--num-gpus=0",
                    "--include-dashboard=true",
                    "--node-ip-address=127.0.0.1",
                    "--disable-usage-stats",
                ],
                env=env,
                start_new_session=True,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                request = urllib.request.Request(
                    f"{self.address}/api/version", headers={"Authorization": f"Bearer {self.token}"}
                )
                with urllib.request.urlopen(request, timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"Ray head not ready in {timeout_s} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process is None:
            return
        try:
            self._stop_jobs()
        finally:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=60)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(self.process.pid, signal.SIGKILL)
            self._kill_marked()
            self.process = None
            subprocess.run(["rm", "-rf", str(self.temp_dir)], check=False)

    def marked_pids(self) -> list[int]:
        """Live processes that belong to this cluster (they carry its marker variable)."""
        needle = f"RESCORED_RAY_CLUSTER={self.marker}".encode()
        pids = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if needle in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                    pids.append(int(pid))
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                continue
        return pids

    def _stop_jobs(self) -> None:
        from ray.job_submission import JobSubmissionClient

        try:
            client = JobSubmissionClient(self.address, headers={"Authorization": f"Bearer {self.token}"})
            running = [
                job.submission_id for job in client.list_jobs() if job.submission_id and not job.status.is_terminal()
            ]
            for job_id in running:
                client.stop_job(job_id)
            deadline = time.monotonic() + 15
            while running and time.monotonic() < deadline:
                if all(client.get_job_status(job_id).is_terminal() for job_id in running):
                    break
                time.sleep(0.25)
        except Exception:  # the head may already be gone; the sweep below still runs
            pass

    def _kill_marked(self, within_s: float = 10.0) -> None:
        """SIGKILL every process of this cluster, again until none is left (a kill is not
        instant: a dying process can still be read in /proc for a moment)."""
        deadline = time.monotonic() + within_s
        while (pids := self.marked_pids()) and time.monotonic() < deadline:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
