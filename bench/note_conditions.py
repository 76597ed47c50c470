"""The note-quality benchmark's pieces and recording conditions (issue 18), rendered with exact truth.

Each condition is a way a user's recording sounds: dry piano, piano in a large reverberant
room with noise, a plucked instrument (GM steel-string guitar), a bowed, sustained
instrument (GM string ensemble), a sung melodic line with vibrato and scoops (pitch-bend
automation in the MIDI), and a bass line (GM fingered bass, for the bass stem's settings).
Pieces are music21 corpus scores of the notation dev set (:mod:`notation_devset`), refused
if held out (:func:`notation_devset.check_not_held_out`): the same exclusions as issue 13.

A render is a directory ``<cache>/renders/<condition>/<piece>/`` with ``audio.wav`` and
``truth.json`` (intervals, pitches), keyed by the condition, the piece spec and the code
that makes them (this file, :mod:`tests.media`, :mod:`tests.conditions`).
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
for _p in (str(REPO), str(BENCH)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import notation_devset as devset  # noqa: E402

from tests import conditions, media  # noqa: E402

BASS = 33  # GM Electric Bass (finger)


@dataclass(frozen=True)
class Condition:
    """How a piece is played and recorded, and which stem kind a separator would file it under."""

    name: str
    description: str
    program: int | None  # GM program for every part (None: the piece's own)
    stem: str  # the stem kind transcribed: other, vocals, bass (mix: separation off)
    room: conditions.RoomSpec | None = None
    vibrato: conditions.VibratoSpec | None = None
    parts: str = "all"  # all | top (the melody) | bottom (the bass line)
    velocity: int | None = None


CONDITIONS: dict[str, Condition] = {
    c.name: c
    for c in (
        Condition("dry", "dry piano (FluidR3 GM grand)", conditions.PIANO, "other"),
        Condition(
            "room",
            "piano in a large room: RT60 1.8 s, DRR -3 dB, pink noise at 30 dB SNR",
            conditions.PIANO,
            "other",
            room=conditions.RoomSpec(),
        ),
        Condition("guitar", "plucked: GM steel-string guitar", conditions.GUITAR, "other"),
        Condition("strings", "bowed, sustained: GM string ensemble 1", conditions.STRINGS, "other"),
        Condition(
            "vibrato",
            "sung melodic line (GM voice oohs) with vibrato +-70 cents at 5.5 Hz and scoops from a semitone flat",
            conditions.VOICE,
            "vocals",
            vibrato=conditions.VibratoSpec(),
            parts="top",
            velocity=100,
        ),
        Condition(
            "vibrato_wide",
            "the same sung lines with a wide vibrato: +-100 cents",
            conditions.VOICE,
            "vocals",
            vibrato=conditions.VibratoSpec(depth_cents=100.0),
            parts="top",
            velocity=100,
        ),
        Condition("bass", "bass line (GM fingered electric bass)", BASS, "bass", parts="bottom", velocity=100),
    )
}
"""Every condition of the benchmark; ``bass`` is there to choose the bass stem's settings."""

POLYPHONIC = (
    "bwv269",
    "bwv102.7",
    "bwv10.7",
    "bwv145.5",
    "lift_every_voice",
    "polonaise",
    "jeanie_alberti",
    "lindenbaum",
)
MELODIC = (
    "friars_hill",
    "hinaus_in_die_ferne",
    "connachtmans_rambles",
    "dan_rogers",
    "lindenbaum",
    "dichterliebe2",
    "jeanie_alberti",
    "bwv148.6",
)
BASS_LINES = ("bwv269", "bwv102.7", "bwv10.7", "bwv145.5", "bwv117.4", "bwv148.6", "lift_every_voice", "polonaise")
PIECES: dict[str, tuple[str, ...]] = {
    "dry": POLYPHONIC,
    "room": POLYPHONIC,
    "guitar": POLYPHONIC,
    "strings": POLYPHONIC,
    "vibrato": MELODIC,
    "vibrato_wide": MELODIC,
    "bass": BASS_LINES,
}
"""The pieces each condition was measured (and its settings chosen) on."""

EXTRA_SPECS = tuple(
    devset.PieceSpec(name, f"Chorale {name.upper()}", "J. S. Bach", f"bach/{name}", None, "chorale", bpm)
    for name, bpm in (("bwv26.6", 88), ("bwv40.8", 96), ("bwv3.6", 84), ("bwv5.7", 92))
)
"""Chorales outside the notation dev set (and not held out), for the validation pieces."""
for _spec in EXTRA_SPECS:
    devset.check_not_held_out(_spec)

_UNSEEN = ("bwv117.4", "bwv148.6", "dichterliebe2", "bwv26.6", "bwv40.8", "bwv3.6", "bwv5.7")
VALIDATION: dict[str, tuple[str, ...]] = {
    "dry": _UNSEEN,
    "room": _UNSEEN,
    "guitar": _UNSEEN,
    "strings": _UNSEEN,
    "vibrato": ("funny_mistake", "bwv117.4", "bwv26.6", "bwv40.8", "bwv3.6", "bwv5.7"),
    "vibrato_wide": ("funny_mistake", "bwv117.4", "bwv26.6", "bwv40.8", "bwv3.6", "bwv5.7"),
    "bass": ("dichterliebe2", "bwv26.6", "bwv40.8", "bwv3.6", "bwv5.7"),
}
"""Pieces no setting was chosen on (``--validation``): how well the choices carry over."""
SPECS = {s.name: s for s in (*devset.DEV_SET, *EXTRA_SPECS)}
MAX_SECONDS = 30.0


@dataclass
class Render:
    """One piece under one condition, as the benchmark uses it."""

    condition: Condition
    piece: str
    wav: Path
    intervals: np.ndarray
    pitches: np.ndarray
    duration_s: float

    @property
    def name(self) -> str:
        return f"{self.condition.name}/{self.piece}"


def _code_hash() -> str:
    h = hashlib.sha256()
    for path in (Path(media.__file__), Path(conditions.__file__), Path(__file__), Path(devset.__file__)):
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


def _keep_parts(score, which: str):
    """The score with only its top part (the melody) or bottom part (the bass), or all."""
    if which == "all":
        return score
    from music21 import stream

    parts = list(score.parts)
    out = stream.Score()
    out.metadata = score.metadata
    out.insert(0, parts[0] if which == "top" else parts[-1])
    return out


def _render(cond: Condition, spec: devset.PieceSpec, out: Path) -> dict:
    import pretty_midi

    score = media.load_score(spec.source, spec.number)
    devset.check_not_held_out(spec, score.metadata.title if score.metadata else None)
    if spec.arrangement:
        score = devset.ARRANGEMENTS[spec.arrangement](score)
    score = _keep_parts(score, cond.parts)
    truth, tempo_map = media.prepare_score(score, tempo=spec.tempo, max_seconds=MAX_SECONDS, title=spec.title)
    n_parts = len(truth.parts)
    velocities = list(spec.velocities) if isinstance(spec.velocities, tuple) else [spec.velocities] * n_parts
    if cond.velocity is not None:
        velocities = [cond.velocity] * n_parts
    programs = [cond.program] * n_parts if cond.program is not None else spec.programs
    piece = media.render_score(
        out,
        truth,
        tempo_map,
        name="dry",
        source=spec.source,
        programs=programs if isinstance(programs, list) else [programs] * n_parts,
        velocities=velocities[:n_parts],
    )
    wav = out / "audio.wav"
    if cond.vibrato is not None:
        pm = pretty_midi.PrettyMIDI(str(piece.midi_path))
        conditions.add_vibrato(pm, cond.vibrato)
        bent = out / "vibrato.mid"
        pm.write(str(bent))
        conditions.render_midi(bent, wav, end_s=piece.duration_s)
        piece.path.unlink()
    else:
        piece.path.rename(wav)
    duration = piece.duration_s
    if cond.room is not None:
        x, rate = media.read_wav(wav)
        wet = conditions.in_room(x, rate, cond.room)
        media.write_wav(wav, wet, rate)
        duration = wet.shape[0] / rate
    return {
        "intervals": piece.intervals.tolist(),
        "pitches": piece.pitches.tolist(),
        "duration_s": duration,
        "lead_in_s": piece.lead_in_s,
    }


def _key(cond: Condition, spec: devset.PieceSpec) -> str:
    return hashlib.sha256((repr(cond) + repr(spec) + f"{MAX_SECONDS}" + _code_hash()).encode()).hexdigest()[:16]


def load(condition: str, piece: str, cache: Path) -> Render:
    """The render of ``piece`` under ``condition``, made first unless cached."""
    cond, spec = CONDITIONS[condition], SPECS[piece]
    out = cache / "renders" / condition / piece
    meta_path = out / "truth.json"
    key = _key(cond, spec)
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else None
    if meta is None or meta.get("key") != key:
        out.mkdir(parents=True, exist_ok=True)
        meta = {"key": key, **_render(cond, spec, out)}
        meta_path.write_text(json.dumps(meta))
    return Render(
        condition=cond,
        piece=piece,
        wav=out / "audio.wav",
        intervals=np.array(meta["intervals"], dtype=float).reshape(-1, 2),
        pitches=np.array(meta["pitches"], dtype=int),
        duration_s=float(meta["duration_s"]),
    )


def renders(
    names: list[str] | None, cache: Path, pieces: list[str] | None = None, validation: bool = False
) -> list[Render]:
    """Every (condition, piece) of the benchmark (or of its validation pieces), or of the
    conditions and pieces named."""
    out = []
    for condition in names or list(CONDITIONS):
        for piece in (VALIDATION if validation else PIECES)[condition]:
            if pieces and piece not in pieces:
                continue
            out.append(load(condition, piece, cache))
    return out
