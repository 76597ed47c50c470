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

from rescored_ray.config import load_config
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

    overrides: dict = {}
    if separation is not None:
        overrides.setdefault("separation", {})["model"] = separation
    if stems is not None:
        overrides.setdefault("transcription", {})["stems"] = stems
    if tempo is not None:
        overrides.setdefault("notation", {})["tempo_override"] = tempo
    if key is not None:
        overrides.setdefault("notation", {})["key_override"] = key
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


if __name__ == "__main__":
    app()
