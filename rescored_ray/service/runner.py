"""Starting the service locally, and the end-to-end demo that goes through it.

``rescored-ray serve`` = a local Ray instance + the Serve app, blocking until Ctrl-C.
``rescored-ray demo`` = the same, plus a loopback file server for the bundled example,
one submission over HTTP, live progress over the WebSocket, the score downloaded, and
everything stopped again.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import threading
import time
from pathlib import Path
from typing import Callable

import httpx

from rescored_ray.service.config import ServiceConfig

APP_NAME = "rescored"


def start_service(config: ServiceConfig, host: str = "127.0.0.1", port: int = 8000,
                  dashboard: bool = True) -> str:
    """Start local Ray (more logical CPUs than cores: every actor sets num_cpus) and the app."""
    import ray
    from ray import serve

    from rescored_ray.service.app import build_app

    if not ray.is_initialized():
        ray.init(num_cpus=max(8, os.cpu_count() or 1), include_dashboard=dashboard,
                 dashboard_host="127.0.0.1", configure_logging=True, logging_level="WARNING",
                 log_to_driver=False)
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(config), name=APP_NAME, route_prefix="/")
    return f"http://{host}:{port}"


def dashboard_url() -> str | None:
    import ray

    try:
        return ray.get_runtime_context().dashboard_url or None  # type: ignore[attr-defined]
    except Exception:
        context = ray.worker.global_worker.node  # noqa: SLF001 - best effort for older Ray
        return getattr(context, "webui_url", None)


def stop_service() -> None:
    import ray
    from ray import serve

    try:
        serve.shutdown()
    finally:
        ray.shutdown()


def _serve_folder(folder: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def follow(base_url: str, job_id: str, on_message: Callable[[dict], None], timeout: float = 600) -> dict:
    """Stream a job's WebSocket until its final message; fall back to polling if it drops."""
    from websockets.sync.client import connect

    ws_url = base_url.replace("http", "ws", 1) + f"/api/v1/jobs/{job_id}/stream"
    try:
        with connect(ws_url, open_timeout=30, close_timeout=5) as ws:
            for raw in ws:
                message = json.loads(raw)
                on_message(message)
                if message["type"] in ("completed", "error", "cancelled"):
                    return message
    except Exception:
        pass
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=base_url, timeout=30) as client:
        while time.monotonic() < deadline:
            job = client.get(f"/api/v1/jobs/{job_id}").json()
            if job["status"] in ("completed", "failed", "cancelled"):
                return {"type": {"failed": "error"}.get(job["status"], job["status"]), "job": job}
            time.sleep(1)
    raise TimeoutError(f"job {job_id} did not finish in {timeout:g} s")


def run_demo(config: ServiceConfig, audio: Path, out_dir: Path, port: int,
             log: Callable[[str], None] = print) -> Path:
    """Submit ``audio`` to a freshly started local service and download its score to ``out_dir``."""
    config = config.model_copy(update={"security": config.security.model_copy(update={"allow_private_networks": True})})
    files, files_url = _serve_folder(audio.parent.resolve())
    started = time.monotonic()
    try:
        base = start_service(config, port=port, dashboard=False)
        log(f"service up at {base} (docs: {base}/docs) in {time.monotonic() - started:.0f} s")
        with httpx.Client(base_url=base, timeout=60) as client:
            created = client.post("/api/v1/transcribe", json={"url": f"{files_url}/{audio.name}"})
            created.raise_for_status()
            job_id = created.json()["job_id"]
            log(f"submitted {audio.name}: job {job_id}")

            def show(message: dict) -> None:
                if message["type"] == "progress":
                    log(f"  [{message['progress']:3d}%] {message['stage']}: {message['message']}")

            final = follow(base, job_id, show)
            job = client.get(f"/api/v1/jobs/{job_id}").json()
            if job["status"] != "completed":
                raise RuntimeError(f"demo job ended {job['status']}: {job.get('error')}")
            out_dir.mkdir(parents=True, exist_ok=True)
            score = out_dir / "score.musicxml"
            score.write_bytes(client.get(f"/api/v1/scores/{job_id}").content)
            (out_dir / "score.mid").write_bytes(client.get(f"/api/v1/scores/{job_id}/midi").content)
            (out_dir / "job.json").write_text(json.dumps(job, indent=2))
            result = job["result"]
            log(f"{final['type']}: {result['n_notes']} notes, key {result['key']}, {result['tempo_bpm']:g} bpm; "
                f"score written to {score}")
            return score
    finally:
        files.shutdown()
        stop_service()
