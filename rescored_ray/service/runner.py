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
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from rescored_ray import layout
from rescored_ray.client import Client
from rescored_ray.settings import Settings

APP_NAME = "rescored"


def start_service(
    config: Settings, host: str = "127.0.0.1", port: int = 8000, dashboard: bool = True, address: str | None = None
) -> str:
    """Start the app on the Ray cluster at ``address``, or on a new local Ray (more logical
    CPUs than cores: every actor sets num_cpus). Returns the service's base URL."""
    import ray
    from ray import serve

    from rescored_ray.service.app import build_app

    global _dashboard
    if address and not ray.is_initialized():
        context = ray.init(address=address, log_to_driver=False)
        _dashboard = f"http://{context.dashboard_url}" if context.dashboard_url else None
    elif not ray.is_initialized():
        # Ray jobs submitted to this local cluster (Client.batch) run `python ...`: make that
        # this interpreter, as in a Jupyter kernel whose venv is not on PATH.
        bin_dir = os.path.dirname(sys.executable)
        if os.environ.get("PATH", "").split(os.pathsep)[0] != bin_dir:
            os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
        context = ray.init(
            address="local",
            num_cpus=max(8, os.cpu_count() or 1),
            include_dashboard=dashboard,
            dashboard_host="127.0.0.1",
            configure_logging=True,
            logging_level=logging.WARNING,
            log_to_driver=False,
        )
        _dashboard = f"http://{context.dashboard_url}" if context.dashboard_url else None
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(config), name=APP_NAME, route_prefix="/")
    return f"http://{host}:{port}"


_dashboard: str | None = None


def dashboard_url() -> str | None:
    """The Ray dashboard (and Jobs API) of the Ray this process started, as an http:// URL."""
    return _dashboard


def stop_service() -> None:
    import ray
    from ray import serve

    try:
        serve.shutdown()
    finally:
        ray.shutdown()


def serve_folder(folder: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    """Serve ``folder`` on a loopback port (the demo's and the notebook's input); returns (server, base URL)."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def run_demo(config: Settings, audio: Path, out_dir: Path, port: int, log: Callable[[str], None] = print) -> Path:
    """Submit ``audio`` to a freshly started local service and download its score to ``out_dir``."""
    from rescored_ray.settings import merge

    config = Settings.model_validate(
        merge(config.model_dump(), {"service": {"security": {"allow_private_networks": True}}})
    )
    files, files_url = serve_folder(audio.parent.resolve())
    started = time.monotonic()
    try:
        base = start_service(config, port=port, dashboard=False)
        log(f"service up at {base} (docs: {base}/docs) in {time.monotonic() - started:.0f} s")
        with Client(base) as client:
            job = client.submit(f"{files_url}/{audio.name}")
            log(f"submitted {audio.name}: job {job.id}")

            def show(message: dict) -> None:
                if message["type"] == "progress":
                    log(f"  [{message['progress']:3d}%] {message['stage']}: {message['message']}")

            job.wait(timeout=600, progress=False, on_message=show)
            score = job.result(progress=False)
            score.save(out_dir)
            (out_dir / "job.json").write_text(json.dumps(job.status(), indent=2))
            score_file = out_dir / layout.file("musicxml")
            log(
                f"completed: {score.result['n_notes']} notes, key {score.key}, {score.tempo:g} bpm; "
                f"score written to {score_file}"
            )
            return score_file
    finally:
        files.shutdown()
        stop_service()
