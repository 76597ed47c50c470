"""Fit the meter model (``rescored_ray/notation/meter_model.json``) on music21's corpus.

The model scores (meter, phase) hypotheses from features of notes on an eighth-note
grid (:mod:`rescored_ray.notation.meter`). Training pieces are symbolic scores, so the
truth is exact: their notes are put on the tatum grid with the kind of noise a
transcription has (onset jitter of a fraction of an eighth, dropped and spurious
notes, shortened durations), cropped to their first 8-32 bars (pickups matter, and the
service sees excerpts as often as whole pieces), and the model is fitted by
maximising the log-probability of the true hypothesis among all of a piece's
hypotheses (a softmax over them, L2-regularised). Pieces in other notations of the
same meters are rescaled: 4/2 and 3/2 are heard as 4/4 and 3/4, 6/4 as 6/8.

Never trained on: the held-out pieces of issue 13 (chorales at positions k of
``sorted(corpus.getComposer('bach'))`` with k mod 37 in {2, 5, 11, 17, 23, 29, 31, 35},
Mozart K.545 and K.155, Joplin's Maple Leaf Rag, Ryan's Mammoth Collection) and the
benchmark's dev set (``bench/notation_devset.py``).

    .venv/bin/python bench/train_meter.py            # fit, report 5-fold accuracy, write the model
    .venv/bin/python bench/train_meter.py --cv-only  # report only
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from scipy.optimize import minimize

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rescored_ray.notation.meter import (  # noqa: E402
    FEATURES,
    METERS,
    MODEL_PATH,
    UNITS_PER_EIGHTH,
    Meter,
    MeterModel,
    TatumNotes,
    _bar,
    hypotheses,
)

JITTER_TATUMS = 0.18
TEXTURE_COPIES = 4
HELD_OUT_MOD37 = {2, 5, 11, 17, 23, 29, 31, 35}


@dataclass
class Piece:
    name: str
    meter: Meter
    onset: np.ndarray  # float, eighths from the piece's start
    end: np.ndarray
    pitch: np.ndarray
    downbeat: float  # eighths: position of the first downbeat
    bar_eighths: int
    texture: bool = False  # not a chorale or folk tune (weighted up: there are few)


def _excluded() -> set[str]:
    """Corpus files never trained on: the held-out chorales and every file the dev set draws from."""
    from music21 import corpus

    bach = sorted(corpus.getComposer("bach"))
    names = {str(p) for k, p in enumerate(bach) if k % 37 in HELD_OUT_MOD37}
    from bench.notation_devset import DEV_SET  # the benchmark's pieces are not for training

    dev = {spec.source.rsplit(".", 1)[0] if "." in spec.source.rsplit("/", 1)[-1] else spec.source for spec in DEV_SET}
    for path in corpus.getPaths():
        rel = str(path).split("/corpus/", 1)[-1].rsplit(".", 1)[0]
        if rel in dev:
            names.add(str(path))
    return names


def _is_held_out(path: str) -> bool:
    low = path.lower()
    return any(s in low for s in ("ryansmammoth", "k545", "k155", "joplin"))


def _normalise(ratio: str) -> tuple[Meter, Fraction] | None:
    """(our meter, eighths per quarter length) for a time signature we model, else None.

    Simple meters hear the denominator's unit as the quarter-note beat; compound ones
    hear it as the eighth.
    """
    num, den = (int(x) for x in ratio.split("/"))
    if num in (2, 3, 4) and den in (1, 2, 4):
        return Meter(2, num), Fraction(den, 2)
    if num in (6, 9, 12) and den in (4, 8):
        return Meter(3, num // 3), Fraction(den, 4)
    return None


def _piece_from_score(name: str, score) -> Piece | None:
    ts = score.flatten().getElementsByClass("TimeSignature")
    ratios = {t.ratioString for t in ts}
    if len(ratios) != 1:
        return None
    norm = _normalise(ratios.pop())
    if norm is None:
        return None
    meter, per_ql = norm
    parts = list(score.parts) or [score]
    measures = list(parts[0].getElementsByClass("Measure"))
    if len(measures) < 4:
        return None
    bar_ql = Fraction(ts[0].barDuration.quarterLength)
    first_len = Fraction(measures[0].duration.quarterLength).limit_denominator(64)
    downbeat_ql = (
        Fraction(measures[1].offset).limit_denominator(64)
        if 0 < first_len < bar_ql
        else Fraction(measures[0].offset).limit_denominator(64)
    )
    rows = []
    for part in parts:
        for n in part.stripTies().flatten().notes:
            ql = Fraction(n.quarterLength).limit_denominator(64)
            if ql <= 0 or n.duration.isGrace:
                continue
            on = Fraction(n.offset).limit_denominator(64)
            for p in n.pitches:
                rows.append((float(on * per_ql), float((on + ql) * per_ql), int(p.midi)))
    if len(rows) < 12:
        return None
    rows.sort()
    arr = np.array(rows)
    return Piece(
        name=name,
        meter=meter,
        onset=arr[:, 0],
        end=arr[:, 1],
        pitch=arr[:, 2].astype(int),
        downbeat=float(downbeat_ql * per_ql),
        bar_eighths=meter.bar_tatums,
    )


CACHE = ROOT / "bench" / ".cache" / "meter_pieces.pkl"


def collect(limit: int | None = None) -> list[Piece]:
    """Every usable corpus piece (cached: parsing the corpus takes about 15 minutes)."""
    import pickle

    if limit is None and CACHE.exists():
        return [Piece(name, Meter(*meter), *rest) for name, meter, *rest in pickle.loads(CACHE.read_bytes())]
    pieces = _collect(limit)
    if limit is None:
        CACHE.parent.mkdir(parents=True, exist_ok=True)
        rows = [
            (
                p.name,
                (p.meter.beat_tatums, p.meter.beats_per_bar),
                p.onset,
                p.end,
                p.pitch,
                p.downbeat,
                p.bar_eighths,
                p.texture,
            )
            for p in pieces
        ]
        CACHE.write_bytes(pickle.dumps(rows))
    return pieces


def balanced(pieces: list[Piece], per_meter: int, rng: np.random.Generator) -> list[Piece]:
    """At most ``per_meter`` chorales and folk tunes of each meter, so 2/4 folk songs do not
    outvote the rest; every texture piece."""
    out: list[Piece] = [p for p in pieces if p.texture]
    for ratio in sorted({p.meter.ratio for p in pieces}):
        group = [p for p in pieces if p.meter.ratio == ratio and not p.texture]
        idx = rng.permutation(len(group))[:per_meter]
        out.extend(group[i] for i in sorted(idx))
    return out


TEXTURE_COMPOSERS = (
    "beethoven",
    "haydn",
    "mozart",
    "schumann_robert",
    "schumann_clara",
    "chopin",
    "corelli",
    "cpebach",
    "handel",
    "weber",
    "verdi",
    "beach",
    "liliuokalani",
    "schubert",
    "monteverdi",
    "trecento",
    "leadSheet",
    "miscFolk",
    "airdsAirs",
    "demos",
)
"""Instrumental and vocal textures beside the chorales and folk tunes: melody over an
accompaniment, quartets, madrigals (few pieces, so each is used several times)."""


def _collect(limit: int | None) -> list[Piece]:
    from music21 import corpus

    skip = _excluded()
    pieces: list[Piece] = []
    bach = [str(p) for p in sorted(corpus.getComposer("bach")) if str(p) not in skip]
    sources: list[tuple[str, bool]] = [(path, False) for path in bach[:limit]]
    for composer in ("oneills1850", "essenFolksong"):
        sources += [(str(p), False) for p in sorted(corpus.getComposer(composer))[:limit]]
    for composer in TEXTURE_COMPOSERS:
        sources += [(str(p), True) for p in sorted(corpus.getComposer(composer))[:limit]]
    for path, texture in sources:
        if path in skip or _is_held_out(path):
            continue
        try:
            parsed = corpus.parse(path)
        except Exception:
            continue
        for i, score in enumerate(getattr(parsed, "scores", None) or [parsed]):
            if len(score.parts) > 6:
                continue
            p = _piece_from_score(f"{Path(path).name}#{i}", score)
            if p is not None:
                p.texture = texture
                pieces.append(p)
    return pieces


def noisy(piece: Piece, rng: np.random.Generator) -> tuple[TatumNotes, int]:
    """The piece as a transcription might give it, on the sixteenth grid: jittered, thinned,
    padded, cropped. Returns the notes and the first downbeat relative to the first onset."""
    u = UNITS_PER_EIGHTH
    bars = int(rng.integers(8, 33))
    stop = piece.downbeat + bars * piece.bar_eighths
    keep = piece.onset < stop
    on, end, pitch = piece.onset[keep] * u, np.minimum(piece.end[keep], stop) * u, piece.pitch[keep]
    n = on.size
    start = on.copy()
    on = on + rng.normal(0, JITTER_TATUMS * u, n)
    end = on + np.maximum((end - start) * rng.uniform(0.65, 1.05, n), 0.6)
    alive = rng.random(n) > 0.05
    on, end, pitch = on[alive], end[alive], pitch[alive]
    extra = int(rng.binomial(max(1, on.size), 0.05))
    if extra and on.size:
        src = rng.integers(0, on.size, extra)
        on = np.append(on, on[src] + rng.uniform(-2, 2, extra))
        end = np.append(end, on[-extra:] + rng.uniform(0.6, 2.0, extra))
        pitch = np.append(pitch, pitch[src] + rng.choice([-12, 12, 7, -5], extra))
    on = np.maximum(on, 0)
    notes = TatumNotes.from_arrays(on, end, pitch)
    first = int(notes.onset.min())
    return notes, round(piece.downbeat * u) - first


def dataset(pieces: list[Piece], copies: int, seed: int):
    rng = np.random.default_rng(seed)
    xs, ys, groups = [], [], []
    for gi, piece in enumerate(pieces):
        for _ in range(copies * (TEXTURE_COPIES if piece.texture else 1)):
            notes, rel_down = noisy(piece, rng)
            hyps, rows = hypotheses(notes)
            truth = [(m == piece.meter and p % _bar(m) == rel_down % _bar(m)) for m, p in hyps]
            if not any(truth):
                continue
            xs.append(rows)
            ys.append(int(np.argmax(truth)))
            groups.append(gi)
    return xs, ys, np.array(groups)


def fit(xs: list[np.ndarray], ys: list[int], hidden: int = 16, l2: float = 1e-3, seed: int = 0) -> MeterModel:
    """Maximise the log-probability of each piece's true hypothesis (softmax over its hypotheses)."""
    x = np.stack(xs)
    y = np.asarray(ys)
    flat = x.reshape(-1, x.shape[2])
    mean, std = flat.mean(axis=0), flat.std(axis=0) + 1e-6
    xn = (x - mean) / std
    dim = x.shape[2]
    sizes = [dim * hidden, hidden, hidden, dim]
    cuts = np.cumsum(sizes)[:-1]

    def unpack(theta):
        w1, b1, w2, v = np.split(theta, cuts)
        return w1.reshape(dim, hidden), b1, w2, v

    def loss(theta):
        w1, b1, w2, v = unpack(theta)
        z = np.tanh(xn @ w1 + b1)
        s = z @ w2 + xn @ v
        s = s - s.max(axis=1, keepdims=True)
        p = np.exp(s)
        p /= p.sum(axis=1, keepdims=True)
        n = len(y)
        value = -np.log(p[np.arange(n), y] + 1e-300).mean() + l2 * theta @ theta
        g = p
        g[np.arange(n), y] -= 1
        g /= n
        dz = g[:, :, None] * w2 * (1 - z**2)
        grad = np.concatenate(
            [
                np.einsum("ehd,ehk->dk", xn, dz).ravel(),
                dz.sum(axis=(0, 1)),
                np.einsum("eh,ehk->k", g, z),
                np.einsum("eh,ehd->d", g, xn),
            ]
        )
        return value, grad + 2 * l2 * theta

    theta0 = np.random.default_rng(seed).normal(0, 0.1, sum(sizes))
    res = minimize(loss, theta0, jac=True, method="L-BFGS-B", options={"maxiter": 400})
    w1, b1, w2, v = unpack(res.x)
    return MeterModel(mean=mean, std=std, w1=w1, b1=b1, w2=w2, v=v)


def accuracy(model: MeterModel, xs, ys, hyps) -> dict:
    meter_ok = phase_ok = 0
    for x, y in zip(xs, ys, strict=False):
        best = int(np.argmax(model.scores(x)))
        meter_ok += hyps[best][0] == hyps[y][0]
        phase_ok += best == y
    n = max(1, len(xs))
    return {"meter": meter_ok / n, "meter_and_phase": phase_ok / n, "n": len(xs)}


# --------------------------------------------------------------------------- rendered pieces

RENDER_CACHE = ROOT / "bench" / ".cache" / "meter_rendered"
PROGRAMS = (0, 0, 0, 73, 40, 25)  # piano mostly; flute, violin and steel guitar for single lines


def _render_and_transcribe(args: tuple[Piece, int]) -> dict | None:
    """One piece rendered (random tempo and instrument, sometimes drifting), transcribed by Basic
    Pitch and put on the eighth grid exactly as :func:`rescored_ray.notation.score_grid` does.

    Returns the notes on the sixteenth grid and the true first downbeat on it (relative to the
    first onset), or None when the beat tracker found another level than the truth's eighths.
    """
    piece, seed = args
    path = RENDER_CACHE / f"{piece.name.replace('/', '_')}-{seed}.npz"
    if path.is_file():
        data = np.load(path)
        return {k: data[k] for k in data.files} if data["ok"] else None
    from rescored_ray.config import NotationConfig
    from rescored_ray.decode import decode_audio
    from rescored_ray.notation import meter_evidence
    from rescored_ray.notation.clean import clean_notes
    from tests import media

    rng = np.random.default_rng(seed)
    bars = int(rng.integers(12, 25))
    stop = piece.downbeat + bars * piece.bar_eighths
    keep = piece.onset < stop
    quarter_bpm = float(rng.uniform(72, 132)) * (1.5 if piece.meter.compound else 1.0)
    drift = float(rng.choice([0.0, 0.0, rng.uniform(-0.08, 0.08)]))
    lead = 0.3
    total = float(stop)

    def seconds(eighths: np.ndarray) -> np.ndarray:  # tempo ramps by `drift` over the excerpt
        k = drift / total
        base = 30.0 / quarter_bpm
        return lead + (base * eighths if k == 0 else base * np.log1p(k * eighths) / k)

    on, off = seconds(piece.onset[keep]), seconds(np.minimum(piece.end[keep], stop))
    mono = not np.any(piece.onset[keep][1:] < piece.end[keep][:-1] - 1e-6)
    program = int(rng.choice(PROGRAMS)) if mono else 0
    notes = media._merge_unisons(
        [media._Note(float(a), float(b), int(p), 85, "x") for a, b, p in zip(on, off, piece.pitch[keep], strict=True)]
    )
    out = RENDER_CACHE / "wav"
    rendered = media._render(
        out,
        f"{piece.name.replace('/', '_')}-{seed}",
        [("x", program, False, notes)],
        quarter_bpm,
        max(n.offset for n in notes),
        0.5,
        None,
        0.8,
        -1.0,
        {"source": piece.name, "lead_in_s": lead},
    )
    audio = decode_audio(rendered.path, max_duration_s=300)
    rendered.path.unlink()
    rendered.midi_path.unlink()
    transcribed = clean_notes(_TRANSCRIBER.transcribe(audio), NotationConfig())
    evidence = meter_evidence(transcribed, NotationConfig(), None, audio.samples, audio.sample_rate, [])
    ok = evidence.notes is not None and evidence.tracked
    result: dict = {"ok": np.array(ok)}
    if ok:
        period = float(np.median(evidence.eighths.periods()))
        first_period = float(seconds(np.array([1.0]))[0] - seconds(np.array([0.0]))[0])
        down = float(evidence.eighths.position(seconds(np.array([piece.downbeat])))[0]) * UNITS_PER_EIGHTH
        rel = round(down) - int(evidence.notes.onset.min())
        ok = (
            abs(period / first_period - 1) < 0.15
            and abs(down - round(down)) < 0.25
            and round(down) % UNITS_PER_EIGHTH == 0
        )
        result = {
            "ok": np.array(ok),
            "onset": evidence.notes.onset,
            "end": evidence.notes.end,
            "pitch": evidence.notes.pitch,
            "rel_down": np.array(rel),
            "meter": np.array([piece.meter.beat_tatums, piece.meter.beats_per_bar]),
            "compound_only": np.array(all(m.compound for m in evidence.candidates)),
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **result)
    return result if ok else None


_TRANSCRIBER = None


def _init_worker() -> None:
    global _TRANSCRIBER
    from rescored_ray.config import TranscriptionConfig
    from rescored_ray.transcription import Transcriber

    _TRANSCRIBER = Transcriber(TranscriptionConfig(stems=["mix"]))


def rendered_dataset(pieces: list[Piece], count: int, seed: int, jobs: int):
    """Examples from ``count`` pieces (balanced over meters) as the pipeline really sees them."""
    from concurrent.futures import ProcessPoolExecutor

    rng = np.random.default_rng(seed + 1)
    by_meter: dict[str, list[Piece]] = {}
    for p in pieces:
        by_meter.setdefault(p.meter.ratio, []).append(p)
    chosen: list[Piece] = []
    per = max(1, count // len(by_meter))
    for group in by_meter.values():
        chosen += [group[i] for i in rng.permutation(len(group))[:per]]
    jobs_args = [(p, seed + i) for i, p in enumerate(chosen)]
    with ProcessPoolExecutor(max_workers=jobs, initializer=_init_worker) as pool:
        results = list(pool.map(_render_and_transcribe, jobs_args, chunksize=2))
    xs, ys, names = [], [], []
    for piece, res in zip(chosen, results, strict=True):
        if res is None:
            continue
        notes = TatumNotes(res["onset"], res["end"], res["pitch"])
        hyps, rows = hypotheses(notes)
        meter = Meter(int(res["meter"][0]), int(res["meter"][1]))
        rel = int(res["rel_down"])
        truth = [m == meter and p % _bar(m) == rel % _bar(m) for m, p in hyps]
        if any(truth):
            xs.append(rows)
            ys.append(int(np.argmax(truth)))
            names.append(piece.name)
    print(f"rendered: {len(xs)} usable examples of {len(chosen)} pieces")
    return xs, ys, names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=int, default=1, help="noisy copies of each symbolic piece")
    ap.add_argument("--rendered", type=int, default=480, help="pieces also rendered and transcribed")
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--ensemble", type=int, default=5, help="models fitted from different starts")
    ap.add_argument("--rendered-weight", type=int, default=4, help="times each rendered example counts")
    ap.add_argument("--jobs", type=int, default=2, help="processes rendering and transcribing")
    ap.add_argument("--limit", type=int, default=None, help="files per corpus collection (quick runs)")
    ap.add_argument("--cv-only", action="store_true")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--per-meter", type=int, default=1000, help="at most this many pieces of one meter")
    args = ap.parse_args()

    t0 = time.time()
    pieces = balanced(collect(args.limit), args.per_meter, np.random.default_rng(args.seed))
    by_meter: dict[str, int] = {}
    for p in pieces:
        by_meter[p.meter.ratio] = by_meter.get(p.meter.ratio, 0) + 1
    print(f"{len(pieces)} pieces ({time.time() - t0:.0f} s): {dict(sorted(by_meter.items()))}")
    xs, ys, groups = dataset(pieces, args.copies, args.seed)
    names = [pieces[g].name for g in groups]
    rx, ry, rnames = rendered_dataset(pieces, args.rendered, args.seed, args.jobs) if args.rendered else ([], [], [])
    hyps = [(m, p) for m in METERS for p in range(0, _bar(m), UNITS_PER_EIGHTH)]
    print(f"{len(xs)} symbolic + {len(rx)} rendered examples, {len(FEATURES)} features ({time.time() - t0:.0f} s)")

    # cross-validation by piece: a piece's symbolic and rendered examples fall in the same fold
    fold = {
        n: int(h)
        for n, h in zip(
            sorted(set(names) | set(rnames)),
            np.random.default_rng(args.seed).integers(0, args.folds, 10**6),
            strict=False,
        )
    }
    cv = []
    for f in range(args.folds):
        w = args.rendered_weight
        tx = [x for x, n in zip(xs + rx * w, names + rnames * w, strict=True) if fold[n] != f]
        ty = [y for y, n in zip(ys + ry * w, names + rnames * w, strict=True) if fold[n] != f]
        model = fit(tx, ty)
        sym = accuracy(
            model,
            [x for x, n in zip(xs, names, strict=True) if fold[n] == f],
            [y for y, n in zip(ys, names, strict=True) if fold[n] == f],
            hyps,
        )
        ren = accuracy(
            model,
            [x for x, n in zip(rx, rnames, strict=True) if fold[n] == f],
            [y for y, n in zip(ry, rnames, strict=True) if fold[n] == f],
            hyps,
        )
        cv.append((sym, ren))
    report = {
        kind: {
            "meter": round(float(np.mean([c[i]["meter"] for c in cv])), 4),
            "meter_and_phase": round(float(np.mean([c[i]["meter_and_phase"] for c in cv])), 4),
        }
        for i, kind in enumerate(("symbolic", "rendered"))
    }
    print(f"{args.folds}-fold CV by piece: {report}")
    if args.cv_only:
        return
    w = args.rendered_weight
    models = [fit(xs + rx * w, ys + ry * w, seed=k) for k in range(args.ensemble)]
    MODEL_PATH.write_text(
        json.dumps(
            {
                "about": "meter models (one hidden layer beside a linear term; scores averaged), fitted by "
                "bench/train_meter.py on music21's corpus: symbolic pieces with simulated noise, and "
                "FluidSynth renders transcribed by Basic Pitch",
                "date": dt.date.today().isoformat(),
                "pieces": len(pieces),
                "pieces_by_meter": by_meter,
                "examples": {"symbolic": len(xs), "rendered": len(rx), "rendered_weight": w},
                "cv": {"folds": args.folds, **report},
                "models": [m.to_dict() for m in models],
            }
        )
        + "\n"
    )
    print(f"wrote {MODEL_PATH.relative_to(ROOT)} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
