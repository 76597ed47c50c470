"""Python SDK for the rescored-ray service: ``Client`` and ``AsyncClient`` (the httpx pattern).

    client = rescored_ray.Client("http://127.0.0.1:8000")
    job = client.submit("https://youtu.be/...", priority="high", stems=["other", "bass"])
    score = job.result()          # waits with a live progress bar (WebSocket, polling if it drops)
    score                         # in Jupyter: the first page of the sheet music

Errors of the service arrive as exceptions of :mod:`rescored_ray.errors`:
:class:`JobFailed` (with ``stage`` and ``retryable``), :class:`JobCancelled`, and a
:class:`ServiceError` subclass for each ``error.code`` of a refused request
(:class:`JobNotFound`, :class:`RateLimited`, ...). ``submit``'s keywords are the fields of
:class:`~rescored_ray.options.JobOptions`. ``Client.batch`` submits a playlist run as a Ray
job through the Ray Jobs API and returns a :class:`BatchRun` to follow it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from websockets.exceptions import InvalidHandshake, InvalidStatus

from rescored_ray import layout
from rescored_ray.errors import (
    BatchFailed,
    JobCancelled,
    JobFailed,
    JobNotFound,
    RateLimited,
    RescoredError,
    ServiceError,
    service_error,
)
from rescored_ray.options import JobOptions
from rescored_ray.score import Score

if TYPE_CHECKING:
    import pandas as pd

    from rescored_ray.batch.progress import Figures as BatchFigures

__all__ = [
    "AsyncClient",
    "AsyncJob",
    "BatchFailed",
    "BatchRun",
    "Client",
    "Job",
    "JobCancelled",
    "JobFailed",
    "JobNotFound",
    "RateLimited",
    "RescoredError",
    "ServiceError",
    "submit_batch",
]

API = "/api/v1"
TERMINAL = {"completed", "failed", "cancelled"}
FINAL_MESSAGES = {"completed", "error", "cancelled"}
DEFAULT_URL = os.environ.get("RESCORED_SERVICE_URL", "http://127.0.0.1:8000")


def _check(response: httpx.Response) -> httpx.Response:
    """The response, or the exception its ``error.code`` stands for (never guessed from the text)."""
    if response.is_success:
        return response
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    raise service_error(response.status_code, body)


def _json(response: httpx.Response) -> dict[str, Any]:
    """The checked response's JSON object."""
    body = _check(response).json()
    if not isinstance(body, dict):
        raise ServiceError(f"expected a JSON object, got {type(body).__name__}", status_code=response.status_code)
    return body


def file_url(job_id: str, file: str) -> str:
    """Service path of one output file of a job (``stems/bass.flac``), built from the layout."""
    return f"{API}/scores/{job_id}{layout.route_of(file)}"


STREAM_RETRY_PAUSES_S = (0.5, 1.0, 2.0, 4.0, 8.0)
"""Pauses before each new attempt at a job's WebSocket after it dropped; then polling."""
STATUS_RETRY_S = 60.0
"""How long a status request is asked again through transient failures before they are raised."""


def _transient(exc: Exception) -> bool:
    """A failure worth asking again: no connection, or the service's 502/503/504 while it moves a replica."""
    if isinstance(exc, httpx.TransportError):
        return True
    return isinstance(exc, ServiceError) and exc.status_code in (500, 502, 503, 504)


def _next_pause(pause: float | None, failure: Exception) -> float | None:
    """After a stream attempt failed: the pause before opening it again, or None to poll.

    A dropped stream or a refused connection is tried again; so is an upgrade refused with a
    5xx (a replica busy or moving). One refused with a 4xx, or by a server that does not speak
    WebSocket (a proxy without it), is refused for good: asking again won't help.
    """
    if isinstance(failure, InvalidHandshake):
        busy = isinstance(failure, InvalidStatus) and failure.response.status_code >= 500
        return pause if busy else None
    return pause


def _sleep_within(seconds: float, deadline: float | None) -> None:
    if deadline is not None:
        seconds = min(seconds, max(0.0, deadline - time.monotonic()))
    time.sleep(seconds)


def _submission(url: str, priority: str, options: dict[str, Any]) -> dict[str, Any]:
    return {"url": url, "priority": priority, "options": JobOptions.of(options).given()}


class _Follower:
    """Turns a job's WebSocket messages into a progress bar and, at the end, a result or an exception."""

    def __init__(self, job_id: str, progress: bool, on_message: Callable[[dict[str, Any]], None] | None):
        self.job_id = job_id
        self.on_message = on_message
        self.reconnects = 0
        """Streams opened again after one dropped."""
        self.bar = None
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=100, desc=f"job {job_id[:8]}", unit="%", bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}"
            )

    def message(self, message: dict[str, Any]) -> bool:
        """Handle one message; True when it was the last one."""
        if self.on_message is not None:
            self.on_message(message)
        kind = message.get("type")
        if kind == "state":
            self._show(message.get("progress") or 0, message.get("status_message") or message.get("status"))
        elif kind == "progress":
            self._show(message.get("progress") or 0, f"{message.get('stage')}: {message.get('message')}")
        elif kind == "retrying":
            self._show(
                None, f"retrying in {message.get('retry_in_s')} s: {(message.get('error') or {}).get('message')}"
            )
        return kind in FINAL_MESSAGES

    def status(self, view: dict[str, Any]) -> bool:
        """Handle a polled job view; True when the job has ended."""
        self._show(view.get("progress") or 0, view.get("status_message") or view.get("status"))
        return view.get("status") in TERMINAL

    def _show(self, percent: int | None, text: str | None) -> None:
        if self.bar is None:
            return
        if percent is not None and percent > self.bar.n:
            self.bar.update(percent - self.bar.n)
        if text:
            self.bar.set_postfix_str(str(text)[:60], refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _outcome(job_id: str, view: dict[str, Any]) -> dict[str, Any]:
    if view["status"] == "failed":
        raise JobFailed(job_id, view.get("error"))
    if view["status"] == "cancelled":
        raise JobCancelled(f"job {job_id} was cancelled", job_id=job_id)
    return view


# -- sync -----------------------------------------------------------------------------------------


class Job:
    """A submitted job; ``result()`` waits for it and returns its :class:`Score`."""

    def __init__(self, client: Client, job_id: str, info: dict[str, Any] | None = None):
        self.client = client
        self.id = job_id
        self.info = info or {}
        self.final: dict[str, Any] | None = None
        """The job's status once :meth:`wait` saw it complete."""
        self.reconnects = 0
        """How many times the last :meth:`wait` opened the job's stream again after it dropped."""

    @property
    def deduplicated(self) -> bool:
        """True when the service returned an existing job for an identical submission."""
        return bool(self.info.get("deduplicated"))

    def status(self) -> dict[str, Any]:
        return self.client._get_json(f"{API}/jobs/{self.id}")

    def cancel(self) -> dict[str, Any]:
        return self.client.cancel(self.id)

    def wait(
        self,
        timeout: float | None = None,
        progress: bool = True,
        on_message: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Block until the job ends; returns its final status, or raises :class:`JobFailed`,
        :class:`JobCancelled` or ``TimeoutError``. Progress comes from the WebSocket stream
        (a tqdm bar: a widget in Jupyter, text in a terminal). A stream that drops (the
        ingress replica's node went away, a proxy restarted) is opened again: each new stream
        starts with the job's state, so nothing is missed; polling takes over if it keeps failing."""
        deadline = None if timeout is None else time.monotonic() + timeout
        follower = _Follower(self.id, progress, on_message)
        try:
            for pause in (*STREAM_RETRY_PAUSES_S, None):
                try:
                    if self._stream(follower, deadline):
                        break
                except TimeoutError:
                    raise
                except Exception as exc:  # it dropped mid-job, could not connect, or was refused
                    pause = _next_pause(pause, exc)
                if pause is None:
                    self._poll(follower, deadline)
                    break
                follower.reconnects += 1
                _sleep_within(pause, deadline)
            self.final = _outcome(self.id, self._status_within(deadline))
            return self.final
        finally:
            self.reconnects = follower.reconnects
            follower.close()

    def _stream(self, follower: _Follower, deadline: float | None) -> bool:
        """Follow the WebSocket; True when the job's last message came, False when the
        server closed the stream before it (a replica shutting down)."""
        from websockets.exceptions import ConnectionClosedOK
        from websockets.sync.client import connect

        url = self.client.ws_url(f"{API}/jobs/{self.id}/stream")
        with connect(url, additional_headers=self.client.headers, open_timeout=30, close_timeout=5) as ws:
            while True:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    raw = ws.recv(timeout=remaining)
                except TimeoutError:
                    raise TimeoutError(f"job {self.id} did not finish in time") from None
                except ConnectionClosedOK:
                    return False
                if follower.message(json.loads(raw)):
                    return True

    def _status_within(self, deadline: float | None) -> dict[str, Any]:
        """The job's status, asked again through transient failures (a 5xx or a refused
        connection while the service moves a replica) for up to :data:`STATUS_RETRY_S`."""
        give_up = time.monotonic() + STATUS_RETRY_S
        if deadline is not None:
            give_up = min(give_up, deadline)
        while True:
            try:
                return self.status()
            except (httpx.TransportError, ServiceError) as exc:
                if not _transient(exc) or time.monotonic() > give_up:
                    raise
            _sleep_within(1.0, give_up)

    def _poll(self, follower: _Follower, deadline: float | None, interval: float = 0.5) -> None:
        while not follower.status(self._status_within(deadline)):
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {self.id} did not finish in time")
            time.sleep(interval)

    def events(self, timeout: float | None = None) -> Iterable[dict[str, Any]]:
        """The job's WebSocket messages as they come (state first, then progress ... final)."""
        collected: list[dict[str, Any]] = []
        self.wait(timeout=timeout, progress=False, on_message=collected.append)
        return collected

    def result(self, timeout: float | None = None, progress: bool = True) -> Score:
        view = self.final or self.wait(timeout=timeout, progress=progress)
        return Score(
            {**(view.get("result") or {}), "job_id": self.id},
            lambda name: self.client._get_bytes(file_url(self.id, name)),
            job_id=self.id,
        )

    def download(self, folder: str | os.PathLike[str], timeout: float | None = None) -> Path:
        """Wait, then save the score, MIDI, notes and stems into ``folder``."""
        return self.result(timeout=timeout, progress=False).save(folder)

    def __repr__(self) -> str:
        return f"Job({self.id!r})"


class Client:
    """Talks to a rescored-ray service (``rescored-ray serve``, ``serve run configs/serve.yaml``)."""

    def __init__(self, base_url: str = DEFAULT_URL, token: str | None = None, timeout: float = 60.0):
        self.base_url = base_url.rstrip("/")
        token = token or os.environ.get("RESCORED_API_TOKEN")  # the service's api_tokens, if it has any
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.base_url, headers=self.headers, timeout=timeout)

    def ws_url(self, path: str) -> str:
        return self.base_url.replace("http://", "ws://", 1).replace("https://", "wss://", 1) + path

    def submit(self, url: str, priority: str = "default", **options: Any) -> Job:
        """Queue one recording; ``options`` are :class:`~rescored_ray.options.JobOptions` fields
        (separation, stems, tempo_override, key_override)."""
        info = _json(self._http.post(f"{API}/transcribe", json=_submission(url, priority, options)))
        return Job(self, info["job_id"], info)

    def submit_many(self, urls: Iterable[str], priority: str = "default", **options: Any) -> list[Job]:
        return [self.submit(url, priority, **options) for url in urls]

    def get(self, job_id: str) -> Job:
        return Job(self, job_id, self._get_json(f"{API}/jobs/{job_id}"))

    def jobs(self, status: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        params: dict[str, str | int] = {"limit": limit, **({"status": status} if status else {})}
        return list(_json(self._http.get(f"{API}/jobs", params=params))["jobs"])

    def cancel(self, job_id: str) -> dict[str, Any]:
        return _json(self._http.delete(f"{API}/jobs/{job_id}"))

    def queue(self) -> dict[str, Any]:
        return self._get_json(f"{API}/queue")

    def batch(self, sources: list[str], output: str, **kwargs: Any) -> BatchRun:
        """Submit a playlist run as a Ray job (see :func:`submit_batch`)."""
        return submit_batch(sources, output, **kwargs)

    def _get_json(self, path: str) -> dict[str, Any]:
        return _json(self._http.get(path))

    def _get_bytes(self, path: str) -> bytes:
        return bytes(_check(self._http.get(path)).content)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- async ----------------------------------------------------------------------------------------


class AsyncJob:
    """:class:`Job` with awaitable methods."""

    def __init__(self, client: AsyncClient, job_id: str, info: dict[str, Any] | None = None):
        self.client = client
        self.id = job_id
        self.info = info or {}

    @property
    def deduplicated(self) -> bool:
        return bool(self.info.get("deduplicated"))

    async def status(self) -> dict[str, Any]:
        return await self.client._get_json(f"{API}/jobs/{self.id}")

    async def cancel(self) -> dict[str, Any]:
        return await self.client.cancel(self.id)

    async def wait(
        self,
        timeout: float | None = None,
        progress: bool = True,
        on_message: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        follower = _Follower(self.id, progress, on_message)
        try:
            async with asyncio.timeout(timeout):
                for pause in (*STREAM_RETRY_PAUSES_S, None):
                    try:
                        if await self._stream(follower):
                            break
                    except (TimeoutError, asyncio.CancelledError):
                        raise
                    except Exception as exc:  # the same rules as Job.wait
                        pause = _next_pause(pause, exc)
                    if pause is None:
                        while not follower.status(await self._status_within()):
                            await asyncio.sleep(0.5)
                        break
                    follower.reconnects += 1
                    await asyncio.sleep(pause)
                return _outcome(self.id, await self._status_within())
        except TimeoutError:
            raise TimeoutError(f"job {self.id} did not finish in time") from None
        finally:
            follower.close()

    async def _stream(self, follower: _Follower) -> bool:
        """True when the job's last message came; False when the stream closed before it."""
        from websockets.asyncio.client import connect

        url = self.client.ws_url(f"{API}/jobs/{self.id}/stream")
        async with connect(url, additional_headers=self.client.headers, open_timeout=30, close_timeout=5) as ws:
            async for raw in ws:  # ends quietly on a clean close, raises on a dropped one
                if follower.message(json.loads(raw)):
                    return True
        return False

    async def _status_within(self) -> dict[str, Any]:
        """:meth:`status` through transient failures for up to :data:`STATUS_RETRY_S` (the
        caller's ``asyncio.timeout`` bounds it too)."""
        give_up = time.monotonic() + STATUS_RETRY_S
        while True:
            try:
                return await self.status()
            except (httpx.TransportError, ServiceError) as exc:
                if not _transient(exc) or time.monotonic() > give_up:
                    raise
            await asyncio.sleep(1.0)

    async def events(self, timeout: float | None = None) -> list[dict[str, Any]]:
        collected: list[dict[str, Any]] = []
        await self.wait(timeout=timeout, progress=False, on_message=collected.append)
        return collected

    async def result(self, timeout: float | None = None, progress: bool = True) -> Score:
        """Waits, then fetches every file the service serves at once (a Score's attributes are
        plain, not awaitable)."""
        view = await self.wait(timeout=timeout, progress=progress)
        result = {**(view.get("result") or {}), "job_id": self.id}
        names = Score.served(result)
        files = await asyncio.gather(*(self.client._get_bytes(file_url(self.id, n)) for n in names))
        cache = dict(zip(names, files, strict=True))
        return Score(result, cache.__getitem__, job_id=self.id)

    async def download(self, folder: str | os.PathLike[str], timeout: float | None = None) -> Path:
        score = await self.result(timeout=timeout, progress=False)
        return await asyncio.to_thread(score.save, folder)

    def __repr__(self) -> str:
        return f"AsyncJob({self.id!r})"


class AsyncClient:
    """:class:`Client` for asyncio code: the same methods, awaitable."""

    def __init__(self, base_url: str = DEFAULT_URL, token: str | None = None, timeout: float = 60.0):
        self.base_url = base_url.rstrip("/")
        token = token or os.environ.get("RESCORED_API_TOKEN")  # the service's api_tokens, if it has any
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=self.headers, timeout=timeout)

    def ws_url(self, path: str) -> str:
        return self.base_url.replace("http://", "ws://", 1).replace("https://", "wss://", 1) + path

    async def submit(self, url: str, priority: str = "default", **options: Any) -> AsyncJob:
        response = await self._http.post(f"{API}/transcribe", json=_submission(url, priority, options))
        info = _json(response)
        return AsyncJob(self, info["job_id"], info)

    async def submit_many(self, urls: Iterable[str], priority: str = "default", **options: Any) -> list[AsyncJob]:
        return list(await asyncio.gather(*(self.submit(url, priority, **options) for url in urls)))

    async def get(self, job_id: str) -> AsyncJob:
        return AsyncJob(self, job_id, await self._get_json(f"{API}/jobs/{job_id}"))

    async def jobs(self, status: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        params: dict[str, str | int] = {"limit": limit, **({"status": status} if status else {})}
        return list(_json(await self._http.get(f"{API}/jobs", params=params))["jobs"])

    async def cancel(self, job_id: str) -> dict[str, Any]:
        return _json(await self._http.delete(f"{API}/jobs/{job_id}"))

    async def queue(self) -> dict[str, Any]:
        return await self._get_json(f"{API}/queue")

    async def batch(self, sources: list[str], output: str, **kwargs: Any) -> BatchRun:
        return await asyncio.to_thread(submit_batch, sources, output, **kwargs)

    async def _get_json(self, path: str) -> dict[str, Any]:
        return _json(await self._http.get(path))

    async def _get_bytes(self, path: str) -> bytes:
        return bytes(_check(await self._http.get(path)).content)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


# -- batch runs as Ray jobs -----------------------------------------------------------------------


def ray_auth_headers() -> dict[str, str]:
    """Ray 2.60 token auth: the token from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token."""
    token = os.environ.get("RAY_AUTH_TOKEN")
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    if not token and Path(path).is_file():
        token = Path(path).read_text().strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


class BatchRun:
    """A playlist run submitted to the Ray Jobs API; follow it like any Ray job."""

    def __init__(self, jobs_client: Any, submission_id: str, output: str):
        self.jobs = jobs_client
        self.id = submission_id
        self.output = output

    def status(self) -> str:
        return str(self.jobs.get_job_status(self.id).value)

    def logs(self) -> str:
        return str(self.jobs.get_job_logs(self.id))

    def wait(self, timeout: float | None = None, poll_s: float = 1.0, progress: bool = True) -> str:
        """Block until the Ray job ends; raises :class:`BatchFailed` (with its log tail) unless it succeeded.

        ``progress``: a tqdm bar of entries done / total with failures, songs per hour and the
        ETA, from the progress lines the run prints into its job logs (read every few seconds).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = _BatchBar(self.id) if progress else None
        try:
            while not self.jobs.get_job_status(self.id).is_terminal():
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"batch {self.id} still running after {timeout:g} s")
                if bar is not None and bar.due():
                    bar.show(self.progress())
                time.sleep(poll_s)
            if bar is not None:
                bar.show(self.progress())
        finally:
            if bar is not None:
                bar.close()
        status = self.status()
        if status != "SUCCEEDED":
            raise BatchFailed(f"batch {self.id} ended {status}:\n{self.logs()[-2000:]}")
        return status

    def progress(self) -> BatchFigures | None:
        """Where the run stands now (entries done / total, failures, songs per hour, ETA), from
        the last progress line in its logs; None before the first."""
        from rescored_ray.batch.progress import Figures

        return Figures.last_in(self.logs())

    def summary(self) -> str | None:
        """The run's summary line (completed/failed/skipped, audio hours, songs/hour)."""
        lines = [line for line in self.logs().splitlines() if line.startswith("batch ")]
        return lines[-1] if lines else None

    def manifest(self) -> pd.DataFrame:
        """The run's Parquet manifest as a pandas DataFrame (one row per entry)."""
        import io

        import pyarrow.parquet as pq

        from rescored_ray.batch.manifest import MANIFEST
        from rescored_ray.storage import ResultStore

        frame: pd.DataFrame = pq.read_table(io.BytesIO(ResultStore(self.output).read_bytes(MANIFEST))).to_pandas()
        return frame

    def __repr__(self) -> str:
        return f"BatchRun({self.id!r}, output={self.output!r})"


class _BatchBar:
    """A batch run's figures as a tqdm bar (a widget in Jupyter, text in a terminal)."""

    EVERY_S = 3.0

    def __init__(self, run_id: str):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=None, desc=f"batch {run_id[:24]}", unit="song")
        self.last = 0.0

    def due(self) -> bool:
        return time.monotonic() - self.last >= self.EVERY_S

    def show(self, figures: BatchFigures | None) -> None:
        self.last = time.monotonic()
        if figures is None:
            return
        from rescored_ray.batch.progress import clock

        self.bar.total = figures.total
        self.bar.update(figures.done - self.bar.n)
        eta = figures.eta_s
        self.bar.set_postfix_str(
            f"{figures.failed} failed, {figures.skipped} skipped, {figures.songs_per_hour:.0f} songs/h,"
            f" ETA {'-' if eta is None else clock(eta)}",
            refresh=True,
        )

    def close(self) -> None:
        self.bar.close()


def submit_batch(
    sources: list[str],
    output: str,
    *,
    config: str | None = None,
    ray_address: str | None = None,
    working_dir: str | os.PathLike[str] | None = None,
    submission_id: str | None = None,
    env: dict[str, str] | None = None,
) -> BatchRun:
    """Run ``python -m rescored_ray.batch SOURCES --output OUTPUT`` as a Ray job.

    ``ray_address`` is the dashboard's HTTP address (default: RAY_API_SERVER_ADDRESS, else
    http://127.0.0.1:8265); the token comes from the usual Ray places (:func:`ray_auth_headers`).
    The cluster runs the rescored-ray it has installed (``cluster.yaml`` installs it on every
    node); ``working_dir`` (a source checkout) is uploaded instead, to run that code.
    """
    from ray.job_submission import JobSubmissionClient

    address = ray_address or os.environ.get("RAY_API_SERVER_ADDRESS") or "http://127.0.0.1:8265"
    if "://" not in address:  # "127.0.0.1:8265" as Ray prints it: without a scheme Ray reads a GCS address
        address = f"http://{address}"
    args = ["python", "-m", "rescored_ray.batch", *sources, "--output", output]
    if config:
        args += ["--config", str(config)]
    jobs = JobSubmissionClient(address, headers=ray_auth_headers())
    runtime_env: dict[str, Any] = {"working_dir": str(working_dir)} if working_dir else {}
    if env:
        runtime_env["env_vars"] = dict(env)
    submission = jobs.submit_job(
        entrypoint=shlex.join(args), runtime_env=runtime_env or None, submission_id=submission_id
    )
    return BatchRun(jobs, submission, output)
