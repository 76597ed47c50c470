"""Command line: ``rescored-ray transcribe SOURCE -o OUTDIR``.

Built on the same :class:`~rescored_ray.pipeline.Pipeline` and settings as the services;
the per-job flags (``--separation``, ``--stems``, ``--tempo``, ``--key``) come from
:class:`~rescored_ray.options.JobOptions`. Errors end in one line on stderr and a non-zero
exit code (2 for permanent, 1 for transient failures, so scripts can decide whether to
try again).
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from rescored_ray import layout
from rescored_ray.errors import ConfigError, PipelineError, RescoredError
from rescored_ray.options import JobOptions, cli_flags

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Recorded music to sheet music.")
err = Console(stderr=True)


def job_option_flags(command: Callable[..., None]) -> Callable[..., None]:
    """One flag per :class:`JobOptions` field (its declared flag and help); ``command`` gets
    them together as ``options: JobOptions``."""
    own = [p for p in inspect.signature(command).parameters.values() if p.name != "options"]
    flags = []
    for name, (flag, help_text) in cli_flags().items():
        annotation = JobOptions.model_fields[name].annotation
        cli_type = float if annotation is not None and "float" in str(annotation) else str
        flags.append(
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                annotation=cli_type | None,
                default=typer.Option(None, flag, help=help_text),
            )
        )

    @functools.wraps(command)
    def run(**values: Any) -> None:
        try:
            options = JobOptions.from_cli({name: values.pop(name) for name in cli_flags()})
        except ValueError as exc:
            _fail(f"error (options, permanent): {' '.join(str(exc).split())}")
            raise typer.Exit(2) from None
        command(options=options, **values)

    run.__signature__ = inspect.Signature([*own, *flags])  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in (*own, *flags)}
    return run


def config_option(example: str) -> Any:
    """``--config``/``-c``: a settings file (:mod:`rescored_ray.settings`), the same for every command."""
    return typer.Option(
        None,
        "--config",
        "-c",
        exists=True,
        dir_okay=False,
        help=f"Settings file ({example}); built-in defaults if omitted.",
    )


def _settings(config: Path | None, overrides: dict[str, Any] | None = None) -> Any:
    """The settings, or one line and exit 2 (a bad file, value or variable)."""
    from rescored_ray.settings import load_settings

    try:
        return load_settings(config, overrides=overrides)
    except ConfigError as exc:
        _fail(f"error (config, permanent): invalid configuration: {' '.join(exc.message.split())}")
        raise typer.Exit(2) from None


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug details to stderr.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


@app.command()
@job_option_flags
def transcribe(
    source: str = typer.Argument(..., help="YouTube or other URL, or a local audio file."),
    output: Path = typer.Option(
        ..., "--output", "-o", help="Folder for score.musicxml, score.mid, stems/, result.json."
    ),
    config: Path | None = config_option("configs/pipeline.yaml"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar; print only the result path."),
    *,
    options: JobOptions,
) -> None:
    """Transcribe one recording into MusicXML + MIDI (+ stems)."""
    from rescored_ray.pipeline import Pipeline

    try:
        cfg = options.apply(_settings(config).pipeline)
    except ValueError as exc:
        _fail(f"error (config, permanent): invalid configuration: {' '.join(str(exc).split())}")
        raise typer.Exit(2) from None

    pipeline = Pipeline(cfg)
    try:
        if quiet or not sys.stderr.isatty():
            result = pipeline.run(source, output, progress=_log_progress if not quiet else None)
        else:
            with Progress(
                TextColumn("{task.description:<28}"),
                BarColumn(),
                TextColumn("{task.percentage:>3.0f}%"),
                TimeElapsedColumn(),
                console=err,
            ) as bar:
                task = bar.add_task("starting", total=100)
                result = pipeline.run(
                    source, output, progress=lambda pct, stage, msg: bar.update(task, completed=pct, description=msg)
                )
    except PipelineError as exc:
        _fail_with(exc)
    summary = (
        f"{result.n_notes} notes, key {result.key}, {result.tempo_bpm:g} bpm, "
        f"{result.duration_s:.1f} s of audio in {sum(result.timings.values()):.1f} s"
    )
    if not quiet:
        err.print(summary, highlight=False)
        for warning in result.warnings:
            err.print(f"warning: {warning}", markup=False, highlight=False)
    typer.echo(str(result.path("musicxml")))


def _fail(line: str) -> None:
    """One unwrapped line on stderr (scripts grep it), never a rich-wrapped paragraph."""
    typer.echo(line, err=True)


def _fail_with(exc: PipelineError) -> NoReturn:
    kind = "transient" if exc.retryable else "permanent"
    _fail(f"error ({exc.stage}, {kind}): {' '.join(exc.message.split())}")
    raise typer.Exit(1 if exc.retryable else 2)


def _log_progress(percent: int, stage: str, message: str) -> None:
    typer.echo(f"[{percent:3d}%] {stage}: {message}", err=True)


@app.command()
def expand(url: str = typer.Argument(..., help="Playlist URL (YouTube playlist, RSS feed, ...).")) -> None:
    """List a playlist's entries as JSON lines, without downloading anything."""
    from rescored_ray.source import expand_playlist

    try:
        entries = expand_playlist(url)
    except PipelineError as exc:
        _fail_with(exc)
    for entry in entries:
        typer.echo(json.dumps(entry.to_dict()))


@app.command()
@job_option_flags
def batch(
    sources: list[str] = typer.Argument(..., help="Playlist URLs, URLs, files of URLs (.txt/.csv/.parquet), folders."),
    output: str = typer.Option(..., "--output", "-o", help="Output folder or URI (s3://..., gs://...)."),
    config: Path | None = config_option("configs/batch.yaml"),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Skip entries already completed in the output."),
    address: str | None = typer.Option(
        None, "--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray started for this run)."
    ),
    progress_every: float = typer.Option(
        3.0,
        "--progress-every",
        min=0.5,
        help="Seconds between progress updates: done/total, failures, songs/hour, ETA "
        "(a live bar on a terminal, plain lines in logs such as `ray job logs`).",
    ),
    operator_bars: bool = typer.Option(
        False,
        "--operator-bars",
        help="Also show Ray Data's per-operator progress bars (the run's figures then print as lines).",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress at all, only the summary at the end."),
    *,
    options: JobOptions,
) -> None:
    """Transcribe whole playlists with Ray Data; writes per-entry scores and a Parquet manifest."""
    from rescored_ray.batch import run_batch
    from rescored_ray.batch.progress import LineView, Tracker, view_for
    from rescored_ray.batch.runner import connect

    cfg = _settings(config)
    try:
        cfg = cfg.model_copy(update={"pipeline": options.apply(cfg.pipeline)})
    except ValueError as exc:
        _fail(f"error (config, permanent): invalid configuration: {' '.join(str(exc).split())}")
        raise typer.Exit(2) from None
    try:
        started_here = connect(address)
        try:
            # two live displays cannot share one terminal: with Ray Data's bars, ours are lines
            view = None if quiet else (LineView(sys.stderr) if operator_bars else view_for(sys.stderr))
            if view is not None:  # a long feed takes yt-dlp a while to list: say what is going on
                print(
                    f"listing the entries of {len(sources)} input(s) (no audio is fetched to list them)",
                    file=sys.stderr,
                )
            progress = Tracker(view, every_s=progress_every)
            summary = run_batch(
                sources, output, cfg, resume=resume, progress_bars=operator_bars and not quiet, progress=progress
            )
        finally:
            if started_here:
                import ray

                ray.shutdown()
    except PipelineError as exc:  # e.g. a model that cannot load: no entry could succeed
        _fail_with(exc)
    except Exception as exc:  # the run itself could not proceed (entries fail into the manifest instead)
        logging.getLogger(__name__).debug("batch run failed", exc_info=True)
        _fail(f"error (batch, transient): the run could not proceed: {' '.join(str(exc).split())}")
        raise typer.Exit(1) from None
    if summary.stage_s:
        err.print("where the time went (summed over completed entries):", highlight=False)
        err.print(summary.stage_table(), highlight=False, markup=False)
    for row in summary.failures[:20]:
        kind = "transient" if row.get("retryable") else "permanent"
        _fail(f"failed {row['id']} ({row.get('stage')}, {kind}): {row.get('error')}")
    typer.echo(summary.line())


SERVICE_OPTION = typer.Option(
    None, "--service", envvar="RESCORED_SERVICE_URL", help="Service base URL (default http://127.0.0.1:8000)."
)


def _client(service: str | None) -> Any:
    from rescored_ray.client import DEFAULT_URL, Client

    return Client(service or DEFAULT_URL)


def _service_call(call: Callable[[], Any]) -> Any:
    """Run an SDK call; service and job errors become one line and an exit code."""
    from rescored_ray.errors import JobCancelled

    try:
        return call()
    except JobCancelled as exc:
        _fail(f"cancelled: {exc.message}")
        raise typer.Exit(1) from None
    except PipelineError as exc:  # JobFailed: the job's stage and whether to retry
        _fail_with(exc)
    except (RescoredError, OSError) as exc:
        _fail(f"error (service): {exc}")
        raise typer.Exit(1) from None


@app.command()
@job_option_flags
def submit(
    url: str = typer.Argument(..., help="Recording URL to transcribe."),
    priority: str = typer.Option("default", "--priority", help="default | high"),
    wait: bool = typer.Option(False, "--wait", help="Follow progress until the job ends."),
    service: str | None = SERVICE_OPTION,
    *,
    options: JobOptions,
) -> None:
    """Submit a URL to a running service; prints the job id (and waits with --wait)."""
    with _client(service) as client:
        job = _service_call(lambda: client.submit(url, priority=priority, **options.given()))
        typer.echo(job.id)
        if wait:
            _service_call(lambda: job.wait(progress=sys.stderr.isatty()))
            typer.echo(f"completed: {client.base_url}/api/v1/scores/{job.id}")


@app.command()
def status(job_id: str = typer.Argument(...), service: str | None = SERVICE_OPTION) -> None:
    """Print a job's status as JSON."""
    with _client(service) as client:
        typer.echo(json.dumps(_service_call(lambda: client.get(job_id).info), indent=2))


@app.command()
def download(
    job_id: str = typer.Argument(...),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for score.musicxml, score.mid, notes.csv, stems/."),
    service: str | None = SERVICE_OPTION,
) -> None:
    """Save a completed job's score, MIDI, notes and stems into a folder (waits if it is still running)."""
    with _client(service) as client:
        folder = _service_call(lambda: client.get(job_id).download(output))
        typer.echo(str(folder / layout.file("musicxml")))


@app.command()
def serve(
    config: Path | None = config_option("configs/serve.yaml, a Serve config file"),
    host: str | None = typer.Option(None, "--host", help="Default: http_options.host, else 127.0.0.1."),
    port: int | None = typer.Option(None, "--port", help="Default: http_options.port, else 8000."),
    ledger: str | None = typer.Option(
        None,
        "--ledger",
        help="The job store: sqlite:///PATH (default: <data_dir>/ledger.sqlite3, one node) or "
        "redis://HOST:PORT/DB (a service across nodes). Same as service.ledger / RESCORED_SERVICE__LEDGER.",
    ),
    address: str | None = typer.Option(
        None, "--address", help="Join this Ray cluster (host:port) instead of starting a local Ray."
    ),
) -> None:
    """Start a local Ray instance (or join one) and the transcription service; Ctrl-C stops both."""
    import time as _time

    from rescored_ray.service.runner import dashboard_url, start_service, stop_service
    from rescored_ray.settings import serve_http_options

    options = serve_http_options(config)
    cfg = _settings(config, overrides={"service": {"ledger": ledger}} if ledger else None)
    try:
        base = start_service(
            cfg, host=host or options.get("host", "127.0.0.1"), port=port or options.get("port", 8000), address=address
        )
    except ConfigError as exc:  # e.g. a local storage_uri on a cluster of several nodes
        _fail(f"error (config, permanent): {exc.message}")
        stop_service()
        raise typer.Exit(2) from None
    typer.echo(f"rescored-ray service: {base}  (API docs: {base}/docs, queue: {base}/api/v1/queue)")
    typer.echo(f"Ray dashboard: {dashboard_url() or 'not started'}  (token auth: see ~/.ray/auth_token)")
    typer.echo(
        f"ledger: {cfg.service.ledger_url}   results: {cfg.service.results_uri}   data: {cfg.service.data_path}"
        "   Ctrl-C to stop"
    )
    try:
        while True:
            _time.sleep(3600)
    except KeyboardInterrupt:
        typer.echo("stopping")
    finally:
        stop_service()


@app.command()
def demo(
    audio: Path = typer.Argument(Path("examples/chorale.mp3"), exists=True, dir_okay=False),
    output: Path = typer.Option(Path("out/demo"), "--output", "-o"),
    config: Path | None = typer.Option(
        Path("configs/demo.yaml"), "--config", "-c", help="Settings of the demo service (configs/demo.yaml)."
    ),
    port: int = typer.Option(8000, "--port"),
) -> None:
    """Start the service, submit the bundled example over HTTP, follow it live, save the score."""
    from rescored_ray.service.runner import run_demo

    cfg = _settings(
        config if config and config.exists() else None,
        overrides={"service": {"data_dir": str(output.resolve() / "service-data")}},
    )
    try:
        run_demo(cfg, audio.resolve(), output, port, log=typer.echo)
    except Exception as exc:  # one line, non-zero exit, like every other command
        _fail(f"error (demo, transient): {' '.join(str(exc).split())}")
        raise typer.Exit(1) from None


if __name__ == "__main__":
    app()
