"""HTTP + WebSocket front door (FastAPI on Ray Serve), compatible with the Rescored API.

The ingress only validates, deduplicates and records: jobs go into the ledger and
workers pick them up. Everything it returns comes from the ledger and the results
store, so any ingress replica on any node answers for any job. It also serves the
status page at ``/`` (plain HTML/JS in ``static/``, no build step).

Every refusal is a :class:`~rescored_ray.errors.ServiceError` answered as
``{"error": {"code": ..., "message": ...}}``; the result files are served from the
output layout (:mod:`rescored_ray.layout`), so a new kind of output needs no new route.
"""

import asyncio
import datetime as dt
import hmac
import logging
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from rescored_ray import layout
from rescored_ray.errors import (
    SERVICE_ERRORS,
    Forbidden,
    InternalError,
    InvalidRequest,
    JobNotFound,
    LengthRequired,
    MethodNotAllowed,
    NonRetryableError,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServiceError,
    Unauthorized,
)
from rescored_ray.netguard import check_url
from rescored_ray.options import JobOptions
from rescored_ray.service.ledger import (
    ClientLimits,
    JobEvent,
    JobRecord,
    JobStatus,
    dedup_key,
    event_message,
    iso_time,
)
from rescored_ray.service.ledger_client import ingress_ledger
from rescored_ray.service.serve_logs import route_to_replica_log
from rescored_ray.settings import Settings
from rescored_ray.source import parse_source, refuse_playlist
from rescored_ray.storage import ResultStore

log = logging.getLogger(__name__)

API = "/api/v1"
FINAL_EVENTS = {"completed", "error", "cancelled"}
HEARTBEAT_S = 30.0
STATIC = Path(__file__).with_name("static")
STATIC_FILES = {"app.js": "text/javascript", "style.css": "text/css"}
OPEN_PATHS = ("/", "/livez", "/healthz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")

app = FastAPI(
    title="rescored-ray",
    version="0.1.0",
    description="Recorded music to sheet music: submit a URL, follow progress, download the score.",
)


class TranscribeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str | None = Field(None, max_length=4096)
    youtube_url: str | None = Field(None, max_length=4096, description="Accepted for compatibility; same as url.")
    options: JobOptions = Field(default_factory=JobOptions)
    priority: Literal["default", "high"] = "default"

    @model_validator(mode="after")
    def _one_url(self):
        if not (self.url or self.youtube_url):
            raise ValueError("url is required")
        return self

    @property
    def source(self) -> str:
        return (self.url or self.youtube_url or "").strip()


_iso = iso_time


def _answer(error: ServiceError, headers: dict[str, str] | None = None) -> JSONResponse:
    """The response for a refusal: ``{"error": {"code", "message"}, ...details}``."""
    return JSONResponse(status_code=error.status_code, content=error.body(), headers=headers)


def client_of(headers, query_params, peer: str | None, tokens: dict[str, str]) -> str | None:
    """Who is calling: the client whose API token came with the request (``Authorization:
    Bearer``, or ``?token=`` where a browser cannot set headers: WebSockets, download links),
    else the peer address when no tokens are configured. None: a token is needed and missing
    or wrong."""
    if not tokens:
        return f"addr:{peer or 'unknown'}"
    header = headers.get("authorization", "")
    presented = header[7:].strip() if header.lower().startswith("bearer ") else query_params.get("token", "")
    for name, token in tokens.items():
        if presented and hmac.compare_digest(presented.encode(), str(token).encode()):
            return name
    return None


@app.middleware("http")
async def _guard_requests(request: Request, call_next):
    """Body size and authentication, before any route runs (WebSockets check in the route)."""
    limits, tokens = request.app.state.limits, request.app.state.tokens
    length = request.headers.get("content-length")
    if request.method in ("POST", "PUT", "PATCH"):
        if length is None:
            return _answer(LengthRequired("a Content-Length header is required"))
        if not length.isdigit() or int(length) > limits.max_body_bytes:
            return _answer(PayloadTooLarge(f"request body over {limits.max_body_bytes} bytes"))
    path = request.url.path
    if path in OPEN_PATHS or path.startswith("/static/"):
        return await call_next(request)
    client = client_of(request.headers, request.query_params, request.client.host if request.client else None, tokens)
    if client is None:
        return _answer(Unauthorized("a valid API token is required"), headers={"WWW-Authenticate": "Bearer"})
    request.state.client_id = client
    return await call_next(request)


@app.exception_handler(ServiceError)
async def _refused(request: Request, exc: ServiceError) -> JSONResponse:
    """Every refusal, raised anywhere (a route, the ledger through Ray), answered one way."""
    if isinstance(exc, RateLimited):  # 429: when to try again, for people and for HTTP clients
        seconds = int(exc.retry_after_s + 0.999)
        return _answer(
            RateLimited(exc.message, seconds, retry_after_seconds=seconds), headers={"Retry-After": str(seconds)}
        )
    return _answer(exc)


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Unknown routes and methods answer like every other error."""
    message = str(exc.detail).lower() if exc.detail else "error"
    if exc.status_code == 405:
        return _answer(MethodNotAllowed(message, allowed=exc.headers.get("allow") if exc.headers else None))
    cls = next((c for c in SERVICE_ERRORS.values() if c.status == exc.status_code), NotFound)
    return _answer(cls(message, status_code=exc.status_code))


@app.exception_handler(RequestValidationError)
async def _invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", []) if p != "body")
    return _answer(
        InvalidRequest(f"invalid request: {where + ': ' if where else ''}{first.get('msg', 'malformed body')}")
    )


@app.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    """A bug answers 500 with a code too; its traceback is logged once, here."""
    log.error("unexpected error answering %s %s", request.method, request.url.path, exc_info=exc)
    return _answer(InternalError(f"internal error: {type(exc).__name__}"))


def _final_event(job: JobRecord) -> JobEvent:
    kind = {"completed": "completed", "failed": "error", "cancelled": "cancelled"}[job.status.value]
    data = {"result": job.result} if kind == "completed" else {"error": job.error} if kind == "error" else {}
    return JobEvent(job_id=job.job_id, seq=0, type=kind, data=data, at=job.updated_at)  # type: ignore[arg-type]


_message = event_message


def job_timeline(job: JobRecord) -> list[dict]:
    """The job's life as spans: time queued before each attempt, then each attempt's stages
    with the workers that ran them (the running attempt shows its current stage, open)."""
    spans: list[dict] = []
    ready = job.created_at
    for attempt in job.attempts:
        spans.append(_span("queued", attempt.number, ready, attempt.started_at, None))
        for stage in attempt.timeline or []:
            spans.append(
                _span(
                    stage["stage"],
                    attempt.number,
                    stage["started_at"],
                    stage.get("ended_at"),
                    stage.get("workers"),
                    ok=stage.get("ok", True),
                )
            )
        if attempt.outcome is None:
            spans.append(
                _span(
                    job.current_stage or "starting",
                    attempt.number,
                    attempt.started_at,
                    None,
                    [{"worker_id": attempt.worker}],
                    ok=None,
                )
            )
        ready = attempt.ended_at or attempt.started_at
    if job.status == JobStatus.QUEUED:
        spans.append(_span("queued", len(job.attempts) + 1, ready, None, None, ok=None))
    return spans


def _span(
    stage: str,
    attempt: int,
    started: float,
    ended: float | None,
    workers: list[dict[str, Any]] | None,
    ok: bool | None = True,
) -> dict[str, Any]:
    return {
        "stage": stage,
        "attempt": attempt,
        "started_at": _iso(started),
        "ended_at": _iso(ended),
        "seconds": round(ended - started, 3) if ended is not None else None,
        "ok": ok,
        "workers": workers,
    }


def _files(job: JobRecord, base: str) -> list[dict[str, Any]]:
    """The completed job's downloads, from the layout: kind, name, media type and URL of each."""
    if job.status != JobStatus.COMPLETED or not job.result:
        return []
    files = []
    for path in layout.listed(job.result.get("outputs")):
        found = layout.kind_of(path)
        if found is not None and found[0].route is not None:
            row, name = found
            files.append(
                {
                    "kind": row.kind,
                    "name": name or None,
                    "file": path,
                    "media_type": row.media_type,
                    "url": f"{base}{API}/scores/{job.job_id}{layout.route_of(path)}",
                }
            )
    return files


def _public_result(result: dict[str, Any] | None) -> dict[str, Any] | None:
    if not result:
        return None
    keep = (
        "title",
        "artist",
        "duration_s",
        "n_notes",
        "n_notes_by_stem",
        "key",
        "tempo_bpm",
        "time_signature",
        "pickup_ql",
        "meter_confidence",
        "tempo_changes",
        "separation_model",
        "separation_precision",
        "stems",
        "timings",
        "warnings",
        "time_offset_s",
        "outputs",
    )
    return {k: result.get(k) for k in keep if k in result}


@serve.deployment(name="Ingress", max_ongoing_requests=200)
@serve.ingress(app)
class Ingress:
    def __init__(self, settings: dict[str, Any], ledger: Any, worker: Any):
        route_to_replica_log()
        resolved = Settings.model_validate(settings)
        self.config, self.pipeline = resolved.service, resolved.pipeline
        app.state.limits = self.config.limits
        app.state.tokens = dict(self.config.security.api_tokens)
        limits = self.config.limits
        self.client_limits = ClientLimits(
            jobs_per_window=limits.jobs_per_window, window_s=limits.window_s, max_active=limits.max_active_jobs
        )
        self.ledger = ingress_ledger(self.config, ledger)  # the Ledger actor, or Redis itself
        self.worker = worker
        self.results = ResultStore(self.config.results_uri)

    # -- submission --------------------------------------------------------------------------
    @app.post(f"{API}/transcribe", status_code=201)
    async def transcribe(self, body: TranscribeRequest, request: Request):
        try:
            source = parse_source(body.source, self.pipeline.source.model_copy(update={"allow_local_files": False}))
            refuse_playlist(source, stage="source")
            if source.is_remote and not self.config.security.allow_private_networks:
                # resolving may block: off the event loop (the download re-checks every hop)
                await asyncio.to_thread(check_url, source.location, self.config.security.networks)
            options = self._normalised_options(body.options)
        except NonRetryableError as exc:
            raise InvalidRequest(exc.message) from exc
        client = request.state.client_id
        # with per-client tokens a client may only join its own jobs; otherwise equal work is shared
        key = dedup_key(source.key, {**options, "client": client} if self.per_client else options)
        # over a client's limits the ledger raises RateLimited: a 429, answered by _refused
        job, deduplicated = await self.ledger.call(
            "submit", source.location, key, options, body.priority, client, self.client_limits
        )
        separated = (options.get("separation") or self.pipeline.separation.model) != "none"
        base = str(request.base_url).rstrip("/")
        ws_base = base.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
        return JSONResponse(
            status_code=201,
            content={
                "job_id": job.job_id,
                "status": job.status.value,
                "created_at": _iso(job.created_at),
                "estimated_duration_seconds": 120 if separated else 20,
                "websocket_url": f"{ws_base}{API}/jobs/{job.job_id}/stream",
                "deduplicated": deduplicated,
            },
        )

    @property
    def per_client(self) -> bool:
        """Tokens configured: each client sees only its own jobs."""
        return bool(self.config.security.api_tokens)

    async def _job_for(self, request_or_socket: Request | WebSocket, job_id: str) -> JobRecord:
        """The job if the caller may see it; else JobNotFound or Forbidden."""
        job = await self.ledger.call("get", job_id)
        if job is None:
            raise JobNotFound("job not found")
        if self.per_client and job.client_id != request_or_socket.state.client_id:
            raise Forbidden("this job belongs to another client")
        return job

    def _normalised_options(self, options: JobOptions) -> dict[str, Any]:
        """Only what changes the output, in canonical form, so equal requests dedup."""
        data = options.given()
        deployed = self.pipeline.separation.model
        if data.get("separation") not in (None, "none", deployed):
            raise NonRetryableError(
                f"separation model {data['separation']!r} is not deployed here (available: {deployed!r}, 'none')",
                stage="source",
            )
        if data.get("separation") == deployed:
            del data["separation"]
        if "stems" in data:
            data["stems"] = sorted(set(data["stems"]))
        if data.get("key_override"):
            from rescored_ray.notation import parse_key

            parse_key(data["key_override"])
        return data

    # -- status ------------------------------------------------------------------------------
    @app.get(f"{API}/jobs/{{job_id}}")
    async def job_status(self, job_id: str, request: Request):
        job = await self._job_for(request, job_id)
        return self._view(job, str(request.base_url).rstrip("/"))

    def _view(self, job: JobRecord, base: str = "") -> dict[str, Any]:
        return {
            "job_id": job.job_id,
            "status": job.status.value,
            "priority": job.priority,
            "source": job.source,
            "options": job.options,
            "progress": job.progress,
            "current_stage": job.current_stage,
            "status_message": job.status_message,
            "created_at": _iso(job.created_at),
            "started_at": _iso(job.started_at),
            "completed_at": _iso(job.completed_at),
            "failed_at": _iso(job.failed_at),
            "cancelled_at": _iso(job.cancelled_at),
            "expires_at": _iso(job.expires_at),
            "attempts": [{k: v for k, v in a.to_dict().items() if k != "timeline"} for a in job.attempts],
            "timeline": job_timeline(job),
            "error": job.error,
            "result": _public_result(job.result),
            "result_url": f"{base}{API}/scores/{job.job_id}" if job.status == JobStatus.COMPLETED else None,
            "files": _files(job, base),
        }

    @app.get(f"{API}/jobs")
    async def list_jobs(self, request: Request, status: str | None = None, limit: int = 50):
        """Most recent jobs first, optionally of one status (queued, running, completed, failed, cancelled)."""
        if status is not None and status not in {s.value for s in JobStatus}:
            raise InvalidRequest(f"invalid status {status!r}: one of {', '.join(s.value for s in JobStatus)}")
        mine = request.state.client_id if self.per_client else None
        jobs = await self.ledger.call("list_jobs", status, max(1, min(int(limit), 500)), mine)
        base = str(request.base_url).rstrip("/")
        return {"jobs": [self._view(job, base) for job in jobs]}

    @app.delete(f"{API}/jobs/{{job_id}}")
    async def cancel(self, job_id: str, request: Request):
        await self._job_for(request, job_id)
        job = await self.ledger.call("cancel", job_id)
        if job is None:
            raise JobNotFound("job not found")
        return {"job_id": job_id, "status": job.status.value, "cancel_requested": job.cancel_requested}

    @app.get(f"{API}/queue")
    async def queue(self):
        """Queue depth per priority, jobs per status, and the worker slots (busy or idle)."""
        stats, workers = await asyncio.gather(self.ledger.call("queue_stats"), self.ledger.workers())
        return {**stats, "worker_slots": self.config.worker_slots, "workers": workers}

    # -- status page -------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def index(self):
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/static/{name}", include_in_schema=False)
    async def static(self, name: str):
        if name not in STATIC_FILES:
            raise NotFound("not found")
        return FileResponse(STATIC / name, media_type=STATIC_FILES[name])

    @app.get("/healthz")
    async def healthz(self):
        """Readiness: the ingress is up and the ledger answers."""
        await self.ledger.call("queue_stats")
        return {"status": "ok"}

    @app.get("/livez")
    async def livez(self):
        """Liveness: the ingress answers (nothing behind it is asked)."""
        return {"status": "ok"}

    # -- results: one route per output of the layout (rescored_ray.layout) ----------------------
    async def _file(self, request: Request, job_id: str, route: str, name: str | None = None) -> Response:
        try:
            found = layout.resolve(route, name)
        except ValueError as exc:  # a bad stem or page name: refused before any lookup
            raise InvalidRequest(str(exc)) from exc
        if found is None:
            raise NotFound("not found")
        row, path = found
        job = await self._job_for(request, job_id)
        if job.status != JobStatus.COMPLETED or not job.result:
            raise NotFound(f"no result yet: job is {job.status.value}")
        if path not in layout.listed(job.result.get("outputs")):
            raise NotFound(f"this job has no {path}")
        data = await asyncio.to_thread(self.results.read_bytes, f"{job_id}/{path}")
        filename = row.download.format(job_id=job_id, name=name)
        return Response(
            content=data,
            media_type=row.media_type,
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )

    @app.get(f"{API}/scores/{{job_id}}", summary="The score (MusicXML)")
    async def score(self, job_id: str, request: Request) -> Response:
        return await self._file(request, job_id, "")

    @app.get(
        f"{API}/scores/{{job_id}}/{{kind}}",
        summary="One output file of a job",
        description="kind: " + ", ".join(row.route for row in layout.LAYOUT if row.route and not row.multi),
    )
    async def score_file(self, job_id: str, kind: str, request: Request) -> Response:
        return await self._file(request, job_id, kind)

    @app.get(
        f"{API}/scores/{{job_id}}/{{kind}}/{{name}}",
        summary="One file of a multi-file output",
        description="kind/name: " + ", ".join(row.route for row in layout.LAYOUT if row.route and row.multi),
    )
    async def score_part(self, job_id: str, kind: str, name: str, request: Request) -> Response:
        return await self._file(request, job_id, kind, name)

    # -- live progress -----------------------------------------------------------------------
    @app.websocket(f"{API}/jobs/{{job_id}}/stream")
    async def stream(self, websocket: WebSocket, job_id: str):
        client = client_of(
            websocket.headers,
            websocket.query_params,
            websocket.client.host if websocket.client else None,
            app.state.tokens,
        )
        if client is None:
            await websocket.close(code=4401, reason="a valid API token is required")
            return
        websocket.state.client_id = client
        await websocket.accept()
        try:
            job = await self._job_for(websocket, job_id)
        except ServiceError as exc:
            await websocket.send_json({"type": "error", "job_id": job_id, **exc.body()})
            await websocket.close()
            return
        seq = job.last_event_seq  # read with the state: no event falls between the two
        await websocket.send_json({"type": "state", **self._view(job)})
        if job.status.terminal:
            await websocket.send_json(_message(job_id, _final_event(job)))
            await websocket.close()
            return
        try:
            # the ledger's long-poll (SQLite), or job:{id}:updates (Redis): whole and in order either way
            async for message in self.ledger.follow(job_id, seq, HEARTBEAT_S):
                if message is None:
                    await websocket.send_json(
                        {"type": "heartbeat", "job_id": job_id, "timestamp": _iso(dt.datetime.now().timestamp())}
                    )
                    continue
                message.pop("seq", None)
                await websocket.send_json(message)
                if message["type"] in FINAL_EVENTS:
                    await websocket.close()
                    return
        except WebSocketDisconnect:
            return
