"""Note-quality benchmark (issue 18): the right notes from real-sounding audio, ours beside stock Basic Pitch.

    .venv/bin/python bench/note_quality.py [--conditions dry,room,...] [--pieces bwv269,...]
        [--no-readback] [--sensitivity] [--jobs 2] [--json out.json] [--markdown out.md]

Renders (:mod:`note_conditions`) music21 corpus pieces of the notation dev set under
recording conditions (dry piano, piano in a reverberant room with noise, steel-string
guitar, string ensemble, a sung line with vibrato and scoops, the same with a wide vibrato,
a bass line), runs Basic Pitch on each once (activations cached), and scores three systems
against the exact truth:

- **stock**: Basic Pitch's own decoding (``transcription.profile: stock``), identical to
  ``basic_pitch.inference.predict`` and to this project before issue 18 (*before*);
- **ours**: the per-stem settings and note refinement (``profile: tuned``, *after*);
- **stock MIDI in MuseScore**: ``predict``'s MIDI file imported by MuseScore 3 (the score a
  user of stock Basic Pitch gets), for the read-back column only.

Figures per condition (means over its pieces): raw note onset F1 and onset+offset F1
(mir_eval, 50 ms, offset ratio 0.2), notes per true note, and, unless ``--no-readback``, the
read-back onset F1 of the written score: the pipeline's ``score.musicxml`` (separation off,
the condition's stem kind) played back by MuseScore 3 (``bench/notation_eval.py``). Each
condition is transcribed as the stem a separator files that sound under (``other``,
``vocals``, ``bass``). ``--sensitivity`` adds the raw onset F1 with each refinement and
decoding setting of the tuned profile moved one step either way. ``--validation`` runs the
pieces no setting was chosen on (:data:`note_conditions.VALIDATION`) instead.

Caches under ``bench/.cache/note_quality`` (git-ignored): renders, activations, notes
(keyed by the settings and the code that makes them) and read-backs (keyed by the score).
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
import sys
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
for _p in (str(REPO), str(BENCH)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import notation_eval as ev  # noqa: E402
import note_conditions as nc  # noqa: E402

DEFAULT_CACHE = BENCH / ".cache" / "note_quality"
SYSTEMS = ("stock", "ours")
warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
log = logging.getLogger("note_quality")

GOALS = {  # issue 18, on the raw notes and on the read-back score
    "room": ("onset_f1", 0.75),
    "guitar": ("onset_f1", 0.75),
    "strings": ("onset_f1", 0.60),
}


def _sha(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return h.hexdigest()[:20]


def _code(*modules: str) -> bytes:
    return b"".join((REPO / m).read_bytes() for m in modules)


# --------------------------------------------------------------------------- transcription (cached)


class Systems:
    """The transcriber of each system, sharing one model session (created on first use)."""

    def __init__(self, config_path: str | None):
        from rescored_ray.settings import load_settings

        self.configs = {
            system: load_settings(config_path, overrides={"pipeline": {"transcription": {"profile": profile}}}).pipeline
            for system, profile in (("stock", "stock"), ("ours", "tuned"))
        }
        self._transcriber: Any = None

    @property
    def transcriber(self) -> Any:
        if self._transcriber is None:
            from rescored_ray.transcription import Transcriber

            self._transcriber = Transcriber(self.configs["ours"].transcription)
        return self._transcriber

    def activations(self, render: nc.Render, cache: Path) -> dict[str, np.ndarray]:
        """Basic Pitch's activations and the model's input audio, cached by the WAV's hash."""
        path = cache / "activations" / f"{render.condition.name}-{render.piece}-{_sha(render.wav.read_bytes())}.npz"
        if path.is_file():
            with np.load(path) as data:
                return {k: data[k] for k in data.files}
        from rescored_ray.decode import decode_audio

        audio = decode_audio(render.wav)
        out = dict(self.transcriber.model_output(audio))
        out["audio"] = self.transcriber.model_input(audio)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **out)
        return out

    def notes(self, system: str, render: nc.Render, cache: Path) -> list[Any]:
        """The notes ``system`` reads off ``render``'s activations (cached by settings and code)."""
        from rescored_ray.types import Note

        config = self.configs[system].transcription
        stem = render.condition.stem
        settings = config.for_stem(stem).model_dump_json()
        key = _sha(
            render.wav.read_bytes(),
            settings.encode(),
            _code("rescored_ray/transcription.py", "rescored_ray/refine.py"),
        )
        path = cache / "notes" / f"{render.condition.name}-{render.piece}-{system}-{key}.json"
        if path.is_file():
            return [Note(**n) for n in json.loads(path.read_text())]
        act = self.activations(render, cache)
        self.transcriber.config = config
        notes = self.transcriber.notes_from_output(act, stem=stem, audio=act["audio"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps([n.to_dict() for n in notes]))
        return list(notes)


# --------------------------------------------------------------------------- measuring


def raw_metrics(render: nc.Render, notes: list[Any]) -> dict[str, float]:
    iv = np.array([[n.start_s, n.end_s] for n in notes], dtype=float).reshape(-1, 2)
    pitches = np.array([n.pitch for n in notes], dtype=int)
    out = ev.note_f1(render.intervals, render.pitches, iv, pitches)
    out["notes_per_true"] = len(notes) / max(1, len(render.pitches))
    return out


def _score_job(args: tuple[str, str, str, str, str, str]) -> dict[str, Any]:
    """Notate one system's notes of one render with the pipeline and read the score back
    through MuseScore (in a worker process: music21 and MuseScore run in parallel)."""
    _system, condition, piece, notes_json, out_dir, config_json = args
    from rescored_ray.config import PipelineConfig
    from rescored_ray.decode import decode_audio
    from rescored_ray.pipeline import Pipeline
    from rescored_ray.types import Note

    cache = Path(out_dir).parents[2]
    render = nc.load(condition, piece, cache)
    cfg = PipelineConfig.model_validate_json(config_json)
    notes = [Note(**n) for n in json.loads(notes_json)]
    out = Path(out_dir)
    try:
        audio = decode_audio(render.wav)
        stem = render.condition.stem
        result = Pipeline(cfg).write(
            f"nq-{piece}", str(render.wav), nc.SPECS[piece].title, audio, {stem: audio}, {stem: notes}, out
        )
        mid = ev.musescore(out / "score.musicxml", out / "readback.mid")
        play = ev.playback(mid, result.time_offset_s)
        metrics = ev.note_f1(render.intervals, render.pitches, play.intervals, play.pitches)
        metrics["notes_per_true"] = len(play.pitches) / max(1, len(render.pitches))
        return metrics
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def readback_cached(system: str, render: nc.Render, notes: list[Any], config: Any, cache: Path) -> tuple:
    """(key path, job args) for one read-back; the path holds the result once measured."""
    notes_json = json.dumps([n.to_dict() for n in notes])
    config_json = config.model_copy(update={"write_stems": False, "write_preview": False}).model_dump_json()
    key = _sha(
        notes_json.encode(),
        config_json.encode(),
        render.wav.read_bytes(),
        _code("bench/notation_eval.py", "bench/note_quality.py"),
        *[p.read_bytes() for p in sorted((REPO / "rescored_ray" / "notation").glob("*.py"))],
    )
    path = cache / "readback" / f"{render.condition.name}-{render.piece}-{system}-{key}.json"
    work = cache / "runs" / system / f"{render.condition.name}-{render.piece}"
    return path, (system, render.condition.name, render.piece, notes_json, str(work), config_json)


def _warm_numba() -> None:
    """Compile librosa's numba functions (the notation's beat tracker) here, once: workers
    compiling them at the same time can corrupt numba's on-disk cache (then they segfault)."""
    import librosa

    noise = np.random.default_rng(0).standard_normal(22050 * 5).astype(np.float32)
    librosa.beat.beat_track(y=noise, sr=22050)


def stock_midi_readback(render: nc.Render, cache: Path) -> dict[str, Any]:
    """Stock ``predict``'s MIDI opened in MuseScore and played back (issue 13's baseline)."""
    import notation_quality as nq

    piece = SimpleNamespace(wav=render.wav, spec=SimpleNamespace(name=f"{render.condition.name}-{render.piece}"))
    path = cache / "stock_midi" / f"{piece.spec.name}-{_sha(render.wav.read_bytes())}.json"
    if path.is_file():
        return json.loads(path.read_text())
    with contextlib.redirect_stdout(io.StringIO()):
        made = nq.run_baseline(piece, False, cache)
    if "error" in made:
        return {"error": made["error"]}
    try:
        mid = ev.musescore(Path(made["xml"]), Path(made["xml"]).with_name("readback.mid"))
        play = ev.playback(mid, made["offset_s"])
        metrics = ev.note_f1(render.intervals, render.pitches, play.intervals, play.pitches)
        metrics["notes_per_true"] = len(play.pitches) / max(1, len(render.pitches))
    except ev.ToolError as exc:
        return {"error": str(exc)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics))
    return metrics


# --------------------------------------------------------------------------- sensitivity

SENSITIVITY = {
    "onset_threshold": 0.1,
    "frame_threshold": 0.05,
    "refine.onset_search_ms": 50.0,
    "refine.onset_peak": 0.1,
    "refine.onset_earlier": 0.1,
    "refine.onset_rise": 0.1,
    "refine.attack_onset": 0.1,
    "refine.attack_onset_low": 0.1,
    "refine.attack_rise_db": 4.0,
    "refine.merge_gap_ms": 30.0,
    "refine.harmonic_ratio": 0.1,
    "refine.subharmonic_ratio": 0.2,
    "refine.ghost_onset": 0.05,
    "refine.vibrato_window_ms": 50.0,
}
"""Each tuned setting and the step it is moved by, either way."""


def sensitivity(systems: Systems, renders: list[nc.Render], cache: Path) -> list[list[str]]:
    """Raw onset F1 per condition with each tuned setting moved one step down and up."""
    from rescored_ray.config import StemOverride, TranscriptionConfig

    base = systems.configs["ours"].transcription
    conditions = sorted({r.condition.name for r in renders}, key=list(nc.CONDITIONS).index)
    acts = {r.name: systems.activations(r, cache) for r in renders}

    def mean_f1(cfg: TranscriptionConfig) -> dict[str, float]:
        systems.transcriber.config = cfg
        out: dict[str, list[float]] = {}
        for r in renders:
            notes = systems.transcriber.notes_from_output(
                acts[r.name], stem=r.condition.stem, audio=acts[r.name]["audio"]
            )
            out.setdefault(r.condition.name, []).append(raw_metrics(r, notes)["onset_f1"])
        return {c: float(np.mean(v)) for c, v in out.items()}

    reference = mean_f1(base)
    rows = [["tuned", "", *(f"{reference[c]:.3f}" for c in conditions)]]
    for name, step in SENSITIVITY.items():
        for sign in (-1, 1):
            per_stem = dict(base.per_stem)
            for stem in {r.condition.stem for r in renders}:
                settings = base.for_stem(stem)
                if name.startswith("refine."):
                    field = name.split(".", 1)[1]
                    if settings.refine is None:
                        continue
                    value = max(0.0, getattr(settings.refine, field) + sign * step)
                    per_stem[stem] = StemOverride(refine={field: min(value, 1.0) if step < 1 else value})
                else:
                    per_stem[stem] = StemOverride(
                        **{name: float(np.clip(getattr(settings, name) + sign * step, 0.05, 0.95))}
                    )
            f1 = mean_f1(base.model_copy(update={"per_stem": per_stem}))
            rows.append(
                [name, f"{sign * step:+g}", *(f"{f1[c]:.3f} ({f1[c] - reference[c]:+.3f})" for c in conditions)]
            )
    systems.transcriber.config = base
    return [["setting", "step", *conditions], *rows]


# --------------------------------------------------------------------------- tables


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r and "error" not in r and key in r]
    return float(np.mean(values)) if values else None


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def summary(results: list[dict[str, Any]], readback: bool) -> tuple[list[str], list[list[str]]]:
    header = [
        "condition",
        "pieces",
        "raw onset F1 stock",
        "raw onset F1 ours",
        "onset+offset F1 stock",
        "onset+offset F1 ours",
        "notes per true note stock",
        "notes per true note ours",
    ]
    if readback:
        header += [
            "read-back onset F1: stock MIDI in MuseScore",
            "read-back onset F1 before (stock notes, our score)",
            "read-back onset F1 after (ours)",
            "read-back notes per true note after",
        ]
    rows = []
    for condition in nc.CONDITIONS:
        sel = [r for r in results if r["condition"] == condition]
        if not sel:
            continue
        row = [condition, str(len(sel))]
        for key, digits in (("onset_f1", 3), ("onset_offset_f1", 3), ("notes_per_true", 2)):
            row += [_fmt(_mean([r["raw"]["stock"] for r in sel], key), digits)]
            row += [_fmt(_mean([r["raw"]["ours"] for r in sel], key), digits)]
        if readback:
            row += [
                _fmt(_mean([r["readback"].get("stock_midi", {}) for r in sel], "onset_f1")),
                _fmt(_mean([r["readback"].get("stock", {}) for r in sel], "onset_f1")),
                _fmt(_mean([r["readback"].get("ours", {}) for r in sel], "onset_f1")),
                _fmt(_mean([r["readback"].get("ours", {}) for r in sel], "notes_per_true"), 2),
            ]
        rows.append(row)
    return header, rows


def piece_rows(results: list[dict[str, Any]], readback: bool) -> tuple[list[str], list[list[str]]]:
    header = ["condition", "piece", "true notes", "raw F1 stock", "raw F1 ours", "on+off F1 stock", "on+off F1 ours"]
    if readback:
        header += ["read-back stock MIDI", "read-back before", "read-back after"]
    rows = []
    for r in results:
        row = [r["condition"], r["piece"], str(r["true_notes"])]
        for key in ("onset_f1", "onset_offset_f1"):
            row += [_fmt(r["raw"]["stock"].get(key)), _fmt(r["raw"]["ours"].get(key))]
        if readback:
            for system in ("stock_midi", "stock", "ours"):
                m = r["readback"].get(system, {})
                row.append(_fmt(m.get("onset_f1")) if "error" not in m else "error")
        rows.append(row)
    return header, rows


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=False))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conditions", help=f"comma-separated, of {', '.join(nc.CONDITIONS)} (default: all)")
    parser.add_argument("--pieces", help="comma-separated piece names (default: each condition's set)")
    parser.add_argument("--validation", action="store_true", help="the pieces no setting was chosen on")
    parser.add_argument("--no-readback", action="store_true", help="raw notes only (no notation, no MuseScore)")
    parser.add_argument("--sensitivity", action="store_true", help="raw F1 with each tuned setting moved a step")
    parser.add_argument("--config", help="pipeline YAML (separation is forced off)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel notation/MuseScore workers")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--markdown", type=Path, help="write the tables here (for bench/RESULTS.md)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    conditions = [c.strip() for c in args.conditions.split(",")] if args.conditions else None
    if conditions and (unknown := sorted(set(conditions) - set(nc.CONDITIONS))):
        parser.error(f"unknown conditions {unknown}")
    pieces = [p.strip() for p in args.pieces.split(",")] if args.pieces else None
    started = time.perf_counter()
    timings: dict[str, float] = {}

    t = time.perf_counter()
    renders = nc.renders(conditions, args.cache, pieces, validation=args.validation)
    timings["renders (unless cached)"] = time.perf_counter() - t
    systems = Systems(args.config)
    t = time.perf_counter()
    results: list[dict[str, Any]] = []
    notes: dict[tuple[str, str], list[Any]] = {}
    for render in renders:
        row: dict[str, Any] = {
            "condition": render.condition.name,
            "piece": render.piece,
            "stem": render.condition.stem,
            "true_notes": len(render.pitches),
            "raw": {},
            "readback": {},
        }
        for system in SYSTEMS:
            notes[(render.name, system)] = systems.notes(system, render, args.cache)
            row["raw"][system] = raw_metrics(render, notes[(render.name, system)])
        results.append(row)
    timings["transcription (Basic Pitch unless cached)"] = time.perf_counter() - t

    readback = not args.no_readback
    if readback:
        t = time.perf_counter()
        jobs: dict[tuple[int, str], tuple[Path, tuple]] = {}
        for i, render in enumerate(renders):
            stem = render.condition.stem
            for system in SYSTEMS:
                config = systems.configs[system].model_copy(deep=True)
                config.separation.model = "none"
                config.transcription.stems = [stem]
                path, job = readback_cached(system, render, notes[(render.name, system)], config, args.cache)
                if path.is_file():
                    results[i]["readback"][system] = json.loads(path.read_text())
                else:
                    jobs[(i, system)] = (path, job)
        if jobs:
            _warm_numba()
        with cf.ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            futures = {pool.submit(_score_job, job): (key, path) for key, (path, job) in jobs.items()}
            for future in cf.as_completed(futures):
                (i, system), path = futures[future]
                metrics = future.result()
                results[i]["readback"][system] = metrics
                if "error" not in metrics:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(json.dumps(metrics))
        for i, render in enumerate(renders):
            results[i]["readback"]["stock_midi"] = stock_midi_readback(render, args.cache)
        timings["read-back (notation + MuseScore unless cached)"] = time.perf_counter() - t

    sens = None
    if args.sensitivity:
        t = time.perf_counter()
        sens = sensitivity(systems, renders, args.cache)
        timings["sensitivity"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - started

    command = "bench/note_quality.py " + " ".join(argv if argv is not None else sys.argv[1:])
    header, rows = summary(results, readback)
    pheader, prows = piece_rows(results, readback)
    print(f"# note quality: {len(renders)} renders, {command.strip()}")
    print(text_table(pheader, prows))
    print()
    print(text_table(header, rows))
    goals = []
    for condition, (key, target) in GOALS.items():
        sel = [r for r in results if r["condition"] == condition]
        if sel:
            raw = _mean([r["raw"]["ours"] for r in sel], key)
            back = _mean([r["readback"].get("ours", {}) for r in sel], key) if readback else None
            goals.append([condition, f">= {target}", _fmt(raw), _fmt(back)])
    for condition in ("vibrato", "vibrato_wide"):
        vib = [r for r in results if r["condition"] == condition]
        if not vib:
            continue
        goals.append(
            [
                f"{condition}: notes per true note",
                "<= 1.15",
                _fmt(_mean([r["raw"]["ours"] for r in vib], "notes_per_true"), 2),
                _fmt(_mean([r["readback"].get("ours", {}) for r in vib], "notes_per_true"), 2) if readback else "—",
            ]
        )
    print()
    print(text_table(["goal (issue 18)", "target", "raw", "read-back"], goals))
    if sens:
        print()
        print(text_table(sens[0], sens[1:]))
    errors = [
        f"{r['condition']}/{r['piece']} {s}: {m['error']}"
        for r in results
        for s, m in r["readback"].items()
        if "error" in m
    ]
    if errors:
        print("errors:\n  " + "\n  ".join(errors))
    print("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "command": command,
                    "date": datetime.now(UTC).isoformat(timespec="seconds"),
                    "conditions": {k: v.description for k, v in nc.CONDITIONS.items()},
                    "results": results,
                    "summary": [dict(zip(header, r, strict=True)) for r in rows],
                    "sensitivity": sens,
                    "timings_s": timings,
                },
                indent=1,
                default=str,
            )
        )
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        parts = [
            f"### Note quality: `{command.strip()}`",
            f"{datetime.now(UTC):%Y-%m-%d}, {len(renders)} renders.",
            markdown_table(header, rows),
            "Goals (issue 18):",
            markdown_table(["goal", "target", "raw", "read-back"], goals),
            "Per piece:",
            markdown_table(pheader, prows),
        ]
        if sens:
            parts += [
                "Sensitivity (raw onset F1, each tuned setting moved one step):",
                markdown_table(sens[0], sens[1:]),
            ]
        args.markdown.write_text("\n\n".join(parts) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
