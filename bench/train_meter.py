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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=int, default=1, help="noisy copies of each piece")
    ap.add_argument("--folds", type=int, default=5)
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
    hyps = [(m, p) for m in METERS for p in range(0, _bar(m), UNITS_PER_EIGHTH)]
    print(f"{len(xs)} examples, {len(FEATURES)} features")

    rng = np.random.default_rng(args.seed)
    fold_of = rng.integers(0, args.folds, len(pieces))[groups]
    cv = []
    for f in range(args.folds):
        tr = [i for i in range(len(xs)) if fold_of[i] != f]
        te = [i for i in range(len(xs)) if fold_of[i] == f]
        w = fit([xs[i] for i in tr], [ys[i] for i in tr])
        cv.append(accuracy(w, [xs[i] for i in te], [ys[i] for i in te], hyps))
    meter_acc = float(np.mean([c["meter"] for c in cv]))
    phase_acc = float(np.mean([c["meter_and_phase"] for c in cv]))
    print(f"{args.folds}-fold CV by piece: meter right {meter_acc:.3f}, meter and bar phase right {phase_acc:.3f}")
    if args.cv_only:
        return
    model = fit(xs, ys)
    MODEL_PATH.write_text(
        json.dumps(
            {
                "about": "meter model (one hidden layer beside a linear term), fitted by bench/train_meter.py "
                "on music21's corpus",
                "date": dt.date.today().isoformat(),
                "pieces": len(pieces),
                "pieces_by_meter": by_meter,
                "examples": len(xs),
                "cv": {"folds": args.folds, "meter": round(meter_acc, 4), "meter_and_phase": round(phase_acc, 4)},
                "model": model.to_dict(),
            }
        )
        + "\n"
    )
    print(f"wrote {MODEL_PATH.relative_to(ROOT)} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
