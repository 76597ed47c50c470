"""Notation quality benchmark (issue 13): our score against the truth and against stock Basic Pitch in MuseScore.

    .venv/bin/python bench/notation_quality.py [--oracle] [--pieces bwv269,polonaise] [--jobs 2]
        [--json out.json] [--markdown out.md] [--pages DIR] [--config configs/pipeline.yaml]

Set-up once: ``bench/setup.sh`` (MuseScore 3 from apt, MV2H built from ../shared/tools/mv2h).

For each dev-set piece (:mod:`notation_devset`: FluidSynth renders of corpus scores, truth
exact): run the pipeline with separation off through its public API (``Pipeline.acquire`` /
``separate`` / ``transcribe`` / ``write``), score ``score.musicxml`` with every measure of
../shared/notation-metrics.md (:mod:`notation_eval`), and the same for the baseline (stock
``basic_pitch.inference.predict`` MIDI imported by ``mscore3``, see :func:`run_baseline` for its time
offset) and the truth
score itself. ``--oracle`` feeds the truth notes to ``Pipeline.write`` instead of Basic
Pitch's, to measure engraving apart from transcription; its baseline is then MuseScore's
import of the same truth notes as a 120 bpm MIDI file.

Caches under ``bench/.cache/notation`` (git-ignored): renders, Basic Pitch notes (keyed by
the WAV's hash and the transcription config), baseline scores, and the metrics of every
truth and baseline score (and of any score whose MusicXML did not change). A rerun after a
notation change redoes only notation and the measuring of our scores.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from datetime import UTC, datetime
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
for _p in (str(REPO), str(BENCH)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import notation_devset as devset  # noqa: E402
import notation_eval as ev  # noqa: E402
import notation_report as report  # noqa: E402

DEFAULT_CACHE = BENCH / ".cache" / "notation"
warnings.filterwarnings("ignore", message="pkg_resources is deprecated")  # resampy, under basic_pitch
log = logging.getLogger("notation_quality")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _error(exc: BaseException) -> dict:
    return {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=6)}


# --------------------------------------------------------------------------- our pipeline


def make_pipeline(config_path: str | None):
    from rescored_ray.pipeline import Pipeline
    from rescored_ray.settings import load_settings

    settings = load_settings(
        config_path,
        overrides={
            "pipeline": {
                "separation": {"model": "none"},
                "transcription": {"stems": ["mix"]},
                "write_stems": False,
                "write_preview": False,
            }
        },
    )
    return Pipeline(settings.pipeline)


def transcribe_cached(pipeline, piece: devset.DevPiece, stems: dict, cache: Path) -> dict:
    """Basic Pitch notes of the mix, cached by WAV hash + transcription config (+ the
    transcription and refinement modules' source, so a change there is never hidden by the cache)."""
    from rescored_ray import refine, transcription
    from rescored_ray.types import Note

    cfg = pipeline.config.transcription.model_dump(exclude={"device"})
    code = Path(transcription.__file__).read_bytes() + Path(refine.__file__).read_bytes()
    key = _sha(piece.wav.read_bytes() + json.dumps(cfg, sort_keys=True).encode() + code)[:24]
    path = cache / "notes" / f"{piece.spec.name}-{key}.json"
    if path.is_file():
        data = json.loads(path.read_text())
        return {stem: [Note(**n) for n in notes] for stem, notes in data.items()}
    notes = pipeline.transcribe(stems)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({stem: [n.to_dict() for n in ns] for stem, ns in notes.items()}))
    return notes


def truth_notes(piece: devset.DevPiece) -> dict:
    from rescored_ray.types import Note

    return {
        "mix": [
            Note(float(a), float(b), int(p), 80, "mix")
            for (a, b), p in zip(piece.intervals, piece.pitches, strict=False)
        ]
    }


def run_ours(pipeline, piece: devset.DevPiece, oracle: bool, out_dir: Path, cache: Path) -> dict:
    """Our score for one piece: ``{"xml", "offset_s", "result", "notation_s", "n_notes_in"}`` (or an error)."""
    try:
        with pipeline.workdir(f"bench-{piece.spec.name}") as work:
            about, audio = pipeline.acquire(str(piece.wav), work)
        stems = pipeline.separate(audio)
        notes = truth_notes(piece) if oracle else transcribe_cached(pipeline, piece, stems, cache)
        transcribed = time.perf_counter()
        if out_dir.exists():
            shutil.rmtree(out_dir)
        pipeline.write(
            f"bench-{piece.spec.name}", str(piece.wav), about.title, audio, stems, notes, out_dir, artist=about.artist
        )
        written = json.loads((out_dir / "result.json").read_text())
    except Exception as exc:
        return _error(exc)
    return {
        "xml": str(out_dir / "score.musicxml"),
        "offset_s": float(written["time_offset_s"]),
        "result": {k: written.get(k) for k in ("tempo_bpm", "time_signature", "key", "title", "n_notes", "warnings")},
        "notation_s": time.perf_counter() - transcribed,
        "n_notes_in": sum(len(v) for v in notes.values()),
    }


# --------------------------------------------------------------------------- baseline


def _notes_midi(piece: devset.DevPiece, path: Path) -> None:
    """The truth notes as a plain 120 bpm piano MIDI file (the oracle's baseline input)."""
    import pretty_midi

    pm = pretty_midi.PrettyMIDI(initial_tempo=120.0)
    inst = pretty_midi.Instrument(program=0)
    inst.notes = [
        pretty_midi.Note(80, int(p), float(a), float(b))
        for (a, b), p in zip(piece.intervals, piece.pitches, strict=False)
    ]
    pm.instruments.append(inst)
    pm.write(str(path))


def _first_onset(mid: Path) -> float:
    import pretty_midi

    return min(n.start for inst in pretty_midi.PrettyMIDI(str(mid)).instruments for n in inst.notes)


def run_baseline(piece: devset.DevPiece, oracle: bool, cache: Path) -> dict:
    """Stock Basic Pitch's MIDI (or, with ``oracle``, the truth notes) opened in MuseScore.

    MuseScore's MIDI import drops the silence before the first note (and re-times the piece
    at a tempo it detects, keeping real time), so the imported score's tick 0 is where the
    first note was: its time offset is the MIDI's first onset minus the first onset
    MuseScore plays back, not 0.
    """
    kind = "oracle" if oracle else "basic_pitch"
    key = _sha(piece.wav.read_bytes() + kind.encode())[:24]
    out = cache / "baseline" / f"{piece.spec.name}-{key}"
    xml, meta = out / "baseline.musicxml", out / "baseline.json"
    try:
        if not meta.is_file():
            out.mkdir(parents=True, exist_ok=True)
            mid = out / ("truth_notes.mid" if oracle else "basic_pitch.mid")
            if oracle:
                _notes_midi(piece, mid)
            else:
                from rescored_ray.transcription import default_model_path

                model = default_model_path()  # imports basic_pitch without its backend warnings
                from basic_pitch.inference import predict

                with contextlib.redirect_stdout(io.StringIO()):  # "Predicting MIDI for ..."
                    _, midi_data, _ = predict(str(piece.wav), model)
                midi_data.write(str(mid))
            ev.musescore(mid, xml)
            played = ev.musescore(xml, out / "readback.mid")
            meta.write_text(json.dumps({"offset_s": _first_onset(mid) - _first_onset(played)}))
    except Exception as exc:
        return _error(exc)
    return {"xml": str(xml), "offset_s": json.loads(meta.read_text())["offset_s"]}


# --------------------------------------------------------------------------- measuring (cached)


def _eval_key(xml: Path, offset_s: float, truth_key: str, extra: str = "") -> str:
    code = (BENCH / "notation_eval.py").read_bytes()
    return _sha(xml.read_bytes() + f"|{offset_s:.6f}|{truth_key}|{extra}".encode() + code)[:24]


def measure_piece(piece: devset.DevPiece, made: dict[str, dict], cache: Path, classes: Path, timeout_s: float) -> dict:
    """Truth, ours and baseline metrics of one piece; every failure becomes that system's error."""
    row: dict = {"piece": piece.spec.name}
    truth_key = json.loads((piece.truth_xml.parent / "truth.json").read_text())["key"]
    tkey = _eval_key(piece.truth_xml, piece.lead_in_s, truth_key)
    tdir = cache / "eval" / "truth" / piece.spec.name
    tfile = tdir / f"{tkey}.json"
    try:
        if tfile.is_file():
            saved = json.loads(tfile.read_text())
        else:
            metrics, truth = ev.measure_truth(
                piece.truth_xml, piece.lead_in_s, piece.intervals, piece.pitches, tdir, classes
            )
            saved = {
                "metrics": metrics,
                "truth": {
                    k: getattr(truth, k) for k in ("time_signature", "fifths", "mean_bpm", "first_barline_s", "beat_s")
                },
            }
            tfile.write_text(json.dumps(saved))
        row["truth"] = saved["metrics"]
        truth = ev.Truth(piece.intervals, piece.pitches, tdir / "mv2h.txt", **saved["truth"])
    except Exception as exc:
        row["truth"] = _error(exc)
        for system in ("ours", "baseline"):
            row[system] = {"error": "truth could not be measured"}
        return row
    for system in ("ours", "baseline"):
        src = made[system]
        if "error" in src:
            row[system] = {"error": src["error"], "traceback": src.get("traceback", "")}
            continue
        xml = Path(src["xml"])
        try:
            key = _eval_key(xml, src["offset_s"], tkey, f"{timeout_s:g}")
            path = cache / "eval" / system / piece.spec.name / f"{key}.json"
            if path.is_file():
                metrics = json.loads(path.read_text())
            else:
                metrics = ev.measure_score(xml, src["offset_s"], truth, path.parent / "work", classes, timeout_s)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(metrics))
            row[system] = metrics | {k: v for k, v in src.items() if k in ("result", "notation_s", "n_notes_in")}
        except Exception as exc:
            row[system] = _error(exc)
    return row


def render_pages(piece: devset.DevPiece, made: dict[str, dict], pages: Path, ours_label: str) -> None:
    """Page 1 of the truth, ours and the baseline as PNGs, for looking at side by side (on white:
    MuseScore's are transparent, which some viewers show as black)."""
    from PIL import Image

    pages.mkdir(parents=True, exist_ok=True)
    sources = {
        "truth": str(piece.truth_xml),
        ours_label: made["ours"].get("xml"),
        "baseline": made["baseline"].get("xml"),
    }
    for label, xml in sources.items():
        if not xml:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            try:
                page = Image.open(ev.musescore(Path(xml), Path(tmp) / "page.png")).convert("RGBA")
                white = Image.new("RGBA", page.size, "white")
                Image.alpha_composite(white, page).convert("RGB").save(pages / f"{piece.spec.name}-{label}.png")
            except ev.ToolError as exc:
                log.warning("%s %s: no page: %s", piece.spec.name, label, exc)


# --------------------------------------------------------------------------- main


def _check_tools(cache: Path) -> Path:
    missing = [t for t in (ev.MUSESCORE, "java", "javac") if shutil.which(t) is None]
    if missing:
        sys.exit(f"missing {', '.join(missing)}: run bench/setup.sh (apt-get install musescore3 default-jdk-headless)")
    return ev.build_mv2h(cache / "mv2h")


def _git_revision() -> str:
    """Commit of the checkout, and whether rescored_ray/ differs from it."""
    try:
        rev = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "rescored_ray"], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        rev, dirty = "", ""
    if not rev:
        return "unknown (not a git checkout)"
    return rev + (" + uncommitted changes in rescored_ray/" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--oracle", action="store_true", help="notate the truth notes instead of Basic Pitch's")
    parser.add_argument("--pieces", help="comma-separated piece names (default: the whole dev set)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel MuseScore/MV2H workers")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--markdown", type=Path, help="write the tables here (for bench/RESULTS.md)")
    parser.add_argument("--pages", type=Path, help="write page 1 of truth, ours and baseline as PNGs here")
    parser.add_argument("--config", help="pipeline YAML (separation and stems are forced off / mix)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--mv2h-timeout", type=float, default=120.0, help="seconds per MV2H run")
    parser.add_argument("--list", action="store_true", help="print the dev set and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    specs = list(devset.DEV_SET)
    if args.pieces:
        wanted = [p.strip() for p in args.pieces.split(",") if p.strip()]
        unknown = sorted(set(wanted) - {s.name for s in specs})
        if unknown:
            parser.error(f"unknown pieces {unknown}; known: {', '.join(s.name for s in specs)}")
        specs = [s for s in specs if s.name in wanted]
    mode = "oracle" if args.oracle else "ours"
    timings: dict[str, float] = {}
    started = time.perf_counter()

    t = time.perf_counter()
    pieces = [devset.load(s, args.cache) for s in specs]
    timings["dev set (renders unless cached)"] = time.perf_counter() - t
    devset_header = [
        "piece",
        "source",
        "meter",
        "pickup (quarters)",
        "texture",
        "instrument",
        "tempo (quarter bpm)",
        "seconds",
    ]
    devset_rows = [
        [
            d["piece"],
            d["source"],
            d["meter"],
            f"{d['pickup_ql']:g}",
            d["texture"],
            d["instrument"],
            d["tempo_bpm"],
            f"{d['seconds']:.1f}",
        ]
        for d in map(devset.describe, pieces)
    ]
    if args.list:
        print(report.text_table(devset_header, devset_rows))
        return 0
    classes = _check_tools(args.cache)

    t = time.perf_counter()
    pipeline = make_pipeline(args.config)
    made: dict[str, dict[str, dict]] = {}
    for piece in pieces:
        ours = run_ours(pipeline, piece, args.oracle, args.cache / "runs" / mode / piece.spec.name, args.cache)
        made[piece.spec.name] = {"ours": ours}
    timings["pipeline (Basic Pitch unless cached)"] = time.perf_counter() - t
    timings["of which notation + writing"] = sum(m["ours"].get("notation_s", 0.0) for m in made.values())

    t = time.perf_counter()
    for piece in pieces:
        made[piece.spec.name]["baseline"] = run_baseline(piece, args.oracle, args.cache)
    timings["baseline (unless cached)"] = time.perf_counter() - t

    t = time.perf_counter()
    with cf.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [
            pool.submit(measure_piece, p, made[p.spec.name], args.cache, classes, args.mv2h_timeout) for p in pieces
        ]
        rows = [f.result() for f in futures]
        if args.pages:
            list(pool.map(lambda p: render_pages(p, made[p.spec.name], args.pages, mode), pieces))
    timings["measuring (MuseScore, MV2H) + pages"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - started

    summaries = {s: report.summarize(rows, s) for s in report.SYSTEMS}
    goal_rows = report.goals(summaries["ours"], summaries["truth"])
    label = "rescored-ray (oracle notes)" if args.oracle else "rescored-ray"
    base_label = "truth notes MIDI opened in MuseScore" if args.oracle else "stock Basic Pitch MIDI opened in MuseScore"
    piece_rows = [
        report.piece_cells(r["piece"], s if s != "ours" else mode, r.get(s)) for r in rows for s in report.SYSTEMS
    ]
    summary_header = ["", label, base_label, "truth"]

    print(f"# notation quality, {mode}: {len(pieces)} pieces, code {_git_revision()}")
    print(report.text_table(report.PIECE_COLUMNS, piece_rows))
    failed = report.failures(rows)
    if failed:
        print("failures:\n" + "\n".join("  " + f for f in failed))
    print()
    print(report.text_table(summary_header, report.summary_cells(summaries)))
    print()
    print(f"goals (issue 13), {label}:")
    print(report.text_table(["goal", "value", "target", ""], report.goal_cells(goal_rows)))
    print()
    print(
        "tempo: the score's mean quarter-note tempo (quarter notes over its playing time) against the truth's; "
        "for drift pieces the truth's mean over the tempo map"
    )
    print("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))

    command = "bench/notation_quality.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "mode": mode,
                    "command": command,
                    "code": _git_revision(),
                    "date": datetime.now(UTC).isoformat(timespec="seconds"),
                    "devset": [devset.describe(p) for p in pieces],
                    "pieces": rows,
                    "summary": summaries,
                    "goals": goal_rows,
                    "timings_s": timings,
                },
                indent=1,
                default=str,
            )
        )
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(
            "\n\n".join(
                [
                    f"### Notation quality ({mode}): `{command.strip()}`",
                    f"{datetime.now(UTC):%Y-%m-%d}, code {_git_revision()}, {len(pieces)} dev-set pieces.",
                    report.markdown_table(summary_header, report.summary_cells(summaries)),
                    f"Goals (issue 13), {label}:",
                    report.markdown_table(["goal", "value", "target", ""], report.goal_cells(goal_rows)),
                    "Per piece:",
                    report.markdown_table(report.PIECE_COLUMNS, piece_rows),
                    *(["Failures:", "\n".join(f"- {f}" for f in failed)] if failed else []),
                    "Dev set:",
                    report.markdown_table(devset_header, devset_rows),
                ]
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
