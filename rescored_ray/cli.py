"""Command line: ``rescored-ray transcribe SOURCE -o OUTDIR``.

Built on the same :class:`~rescored_ray.pipeline.Pipeline` and config as the services;
errors end in one line on stderr and a non-zero exit code (2 for permanent, 1 for
transient failures, so scripts can decide whether to try again).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from rescored_ray.config import load_config, options_to_overrides
from rescored_ray.errors import PipelineError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Recorded music to sheet music.")
err = Console(stderr=True)


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug details to stderr.")) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@app.command()
def transcribe(
    source: str = typer.Argument(..., help="YouTube or other URL, or a local audio file."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for score.musicxml, score.mid, stems/, result.json."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", exists=True, dir_okay=False, help="YAML config."),
    separation: Optional[str] = typer.Option(None, "--separation", help="Demucs model name, or 'none'."),
    stems: Optional[str] = typer.Option(None, "--stems", help="Comma-separated stems to transcribe."),
    tempo: Optional[float] = typer.Option(None, "--tempo", help="Tempo in BPM instead of estimating it."),
    key: Optional[str] = typer.Option(None, "--key", help="Key (e.g. Gm, 'E- major') instead of estimating it."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar; print only the result path."),
) -> None:
    """Transcribe one recording into MusicXML + MIDI (+ stems)."""
    from rescored_ray.pipeline import Pipeline

    overrides = options_to_overrides({"separation": separation, "stems": stems, "tempo": tempo, "key": key})
    try:
        cfg = load_config(config, overrides=overrides)
    except Exception as exc:
        _fail(f"error (config, permanent): invalid configuration: {' '.join(str(exc).split())}")
        raise typer.Exit(2)

    pipeline = Pipeline(cfg)
    try:
        if quiet or not sys.stderr.isatty():
            result = pipeline.run(source, output, progress=_log_progress if not quiet else None)
        else:
            with Progress(TextColumn("{task.description:<28}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                          TimeElapsedColumn(), console=err) as bar:
                task = bar.add_task("starting", total=100)
                result = pipeline.run(source, output,
                                      progress=lambda pct, stage, msg: bar.update(task, completed=pct, description=msg))
    except PipelineError as exc:
        _fail_with(exc)
    summary = (f"{result.n_notes} notes, key {result.key}, {result.tempo_bpm:g} bpm, "
               f"{result.duration_s:.1f} s of audio in {sum(result.timings.values()):.1f} s")
    if not quiet:
        err.print(summary, highlight=False)
        for warning in result.warnings:
            err.print(f"warning: {warning}", markup=False, highlight=False)
    typer.echo(result.outputs["musicxml"])


def _fail(line: str) -> None:
    """One unwrapped line on stderr (scripts grep it), never a rich-wrapped paragraph."""
    typer.echo(line, err=True)


def _fail_with(exc: PipelineError) -> None:
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
def batch(
    sources: list[str] = typer.Argument(..., help="Playlist URLs, URLs, files of URLs (.txt/.csv/.parquet), folders."),
    output: str = typer.Option(..., "--output", "-o", help="Output folder or URI (s3://..., gs://...)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", exists=True, dir_okay=False,
                                          help="Batch config (configs/batch.yaml); built-in defaults if omitted."),
    separation: Optional[str] = typer.Option(None, "--separation", help="Demucs model name, or 'none'."),
    stems: Optional[str] = typer.Option(None, "--stems", help="Comma-separated stems to transcribe."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Skip entries already completed in the output."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (default: RAY_ADDRESS, "
                                          "else a local Ray started for this run)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No Ray Data progress bars."),
) -> None:
    """Transcribe whole playlists with Ray Data; writes per-entry scores and a Parquet manifest."""
    from rescored_ray.batch import load_batch_config, run_batch
    from rescored_ray.batch.runner import connect

    overrides = {"pipeline": options_to_overrides({"separation": separation, "stems": stems})}
    try:
        cfg = load_batch_config(config, overrides=overrides)
    except Exception as exc:
        _fail(f"error (config, permanent): invalid configuration: {' '.join(str(exc).split())}")
        raise typer.Exit(2)
    try:
        started_here = connect(cfg, address)
        try:
            summary = run_batch(sources, output, cfg, resume=resume, progress_bars=not quiet)
        finally:
            if started_here:
                import ray

                ray.shutdown()
    except PipelineError as exc:  # e.g. a model that cannot load: no entry could succeed
        _fail_with(exc)
    except Exception as exc:  # the run itself could not proceed (entries fail into the manifest instead)
        logging.getLogger(__name__).debug("batch run failed", exc_info=True)
        _fail(f"error (batch, transient): the run could not proceed: {' '.join(str(exc).split())}")
        raise typer.Exit(1)
    if summary.stage_s:
        err.print("where the time went (summed over completed entries):", highlight=False)
        err.print(summary.stage_table(), highlight=False, markup=False)
    for row in summary.failures[:20]:
        kind = "transient" if row.get("retryable") else "permanent"
        _fail(f"failed {row['id']} ({row.get('stage')}, {kind}): {row.get('error')}")
    typer.echo(summary.line())


SERVICE_OPTION = typer.Option(None, "--service", envvar="RESCORED_SERVICE_URL",
                              help="Service base URL (default http://127.0.0.1:8000).")


def _client(service: Optional[str]):
    from rescored_ray.client import DEFAULT_URL, Client

    return Client(service or DEFAULT_URL)


def _service_call(call):
    """Run an SDK call; service and job errors become one line and an exit code."""
    from rescored_ray.client import JobCancelled, JobFailed, RescoredError

    try:
        return call()
    except JobFailed as exc:
        _fail(f"error ({exc.stage}, {'transient' if exc.retryable else 'permanent'}): {' '.join(exc.message.split())}")
        raise typer.Exit(1 if exc.retryable else 2)
    except JobCancelled as exc:
        _fail(f"cancelled: {exc}")
        raise typer.Exit(1)
    except (RescoredError, OSError) as exc:
        _fail(f"error (service): {exc}")
        raise typer.Exit(1)


@app.command()
def submit(
    url: str = typer.Argument(..., help="Recording URL to transcribe."),
    priority: str = typer.Option("default", "--priority", help="default | high"),
    stems: Optional[str] = typer.Option(None, "--stems", help="Comma-separated stems to transcribe."),
    wait: bool = typer.Option(False, "--wait", help="Follow progress until the job ends."),
    service: Optional[str] = SERVICE_OPTION,
) -> None:
    """Submit a URL to a running service; prints the job id (and waits with --wait)."""
    with _client(service) as client:
        options = {"stems": [s.strip() for s in stems.split(",") if s.strip()]} if stems else {}
        job = _service_call(lambda: client.submit(url, priority=priority, **options))
        typer.echo(job.id)
        if wait:
            _service_call(lambda: job.wait(progress=sys.stderr.isatty()))
            typer.echo(f"completed: {client.base_url}/api/v1/scores/{job.id}")


@app.command()
def status(job_id: str = typer.Argument(...), service: Optional[str] = SERVICE_OPTION) -> None:
    """Print a job's status as JSON."""
    with _client(service) as client:
        typer.echo(json.dumps(_service_call(lambda: client.get(job_id).info), indent=2))


@app.command()
def download(
    job_id: str = typer.Argument(...),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for score.musicxml, score.mid, notes.csv, stems/."),
    service: Optional[str] = SERVICE_OPTION,
) -> None:
    """Save a completed job's score, MIDI, notes and stems into a folder (waits if it is still running)."""
    with _client(service) as client:
        folder = _service_call(lambda: client.get(job_id).download(output))
        typer.echo(str(folder / "score.musicxml"))


@app.command()
def serve(
    config: Optional[Path] = typer.Option(None, "--config", "-c", exists=True, dir_okay=False,
                                          help="Serve config file (configs/serve.yaml); built-in defaults if omitted."),
    host: Optional[str] = typer.Option(None, "--host", help="Default: http_options.host, else 127.0.0.1."),
    port: Optional[int] = typer.Option(None, "--port", help="Default: http_options.port, else 8000."),
) -> None:
    """Start a local Ray instance and the transcription service; Ctrl-C stops both."""
    import time as _time

    from rescored_ray.service.config import http_options, load_service_config
    from rescored_ray.service.runner import dashboard_url, start_service, stop_service

    options = http_options(config)
    cfg = load_service_config(config)
    base = start_service(cfg, host=host or options.get("host", "127.0.0.1"), port=port or options.get("port", 8000))
    typer.echo(f"rescored-ray service: {base}  (API docs: {base}/docs, queue: {base}/api/v1/queue)")
    typer.echo(f"Ray dashboard: {dashboard_url() or 'not started'}  (token auth: see ~/.ray/auth_token)")
    typer.echo(f"data: {cfg.data_path}   results: {cfg.results_uri}   Ctrl-C to stop")
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
    config: Optional[Path] = typer.Option(Path("configs/demo.yaml"), "--config", "-c",
                                          help="Pipeline settings for the demo service."),
    port: int = typer.Option(8000, "--port"),
) -> None:
    """Start the service, submit the bundled example over HTTP, follow it live, save the score."""
    from rescored_ray.service.config import load_service_config
    from rescored_ray.service.runner import run_demo

    pipeline = load_config(config if config and config.exists() else None)
    cfg = load_service_config(overrides={"data_dir": str(output.resolve() / "service-data"),
                                         "pipeline": pipeline.model_dump()})
    try:
        run_demo(cfg, audio.resolve(), output, port, log=typer.echo)
    except Exception as exc:  # one line, non-zero exit, like every other command
        _fail(f"error (demo, transient): {' '.join(str(exc).split())}")
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
