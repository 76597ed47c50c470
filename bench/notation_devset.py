"""The notation benchmark's dev set: short FluidSynth renders of music21 corpus scores, with exact truth.

Each piece is a corpus score made into a ground truth by :func:`tests.media.prepare_score`
(sounding pitch, repeats expanded, performance marks removed, cut at a barline, pickup as an
implicit measure 0, the rendered tempo or tempo map written as metronome marks) and rendered
by :func:`tests.media.render_score`. The truth notes are read back from the very MIDI file
FluidSynth played. Renders are cached under ``<cache>/renders/<name>/`` keyed by the spec and
the code that makes them.

Held out from all development (issue 13), and refused here by :func:`check_not_held_out`:
chorales at positions k of ``sorted(corpus.getComposer('bach'))`` with k mod 37 in
{2, 5, 11, 17, 23, 29, 31, 35}, Mozart K.545 and K.155, Joplin's Maple Leaf Rag, and every
tune of Ryan's Mammoth Collection (by corpus path and by title).
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests import media  # noqa: E402

FLUTE = 73  # GM program (0-based)
PIANO = 0
HELD_OUT_CHORALE_RESIDUES = frozenset({2, 5, 11, 17, 23, 29, 31, 35})
HELD_OUT_SOURCES = ("mozart/k545", "mozart/k155", "joplin/maple_leaf_rag", "ryansmammoth")


@dataclass(frozen=True)
class PieceSpec:
    """How one dev-set piece is made. ``tempo`` is a quarter-note bpm or drift anchors."""

    name: str
    title: str
    composer: str
    source: str  # music21 corpus path
    number: int | None  # tune number inside an ABC collection
    texture: str
    tempo: float | tuple[float, ...]
    programs: int | tuple[int, ...] = PIANO
    velocities: int | tuple[int, ...] = 80
    max_seconds: float = 35.0
    arrangement: str | None = None  # name of a function in ARRANGEMENTS applied to the corpus score


@dataclass
class DevPiece:
    """A rendered dev-set piece as the benchmark uses it (all loaded from the cache)."""

    spec: PieceSpec
    wav: Path
    truth_xml: Path
    intervals: np.ndarray  # (N, 2) seconds in the WAV
    pitches: np.ndarray  # (N,) MIDI
    lead_in_s: float  # audio time of the truth score's tick 0
    time_signature: str
    pickup_ql: float
    tempo_changes: list[tuple[float, float]]  # (quarter-note offset, quarter bpm)
    initial_bpm: float
    mean_bpm: float
    duration_s: float

    @property
    def drift(self) -> bool:
        return len(self.tempo_changes) > 1


def _alberti_arrangement(score):
    """Foster's lead sheet as a piano piece: melody in the right hand over an Alberti bass.

    The left hand plays the lead sheet's chord symbols as running eighths root-fifth-third-
    fifth, root in C3..B3 (so the figure spans C3..F#4 and often crosses middle C). The
    corpus file has no key signature although its chords and B-flats are F major: one flat
    is written. Its first bar (half rest, then a half note) becomes a two-beat pickup.
    """
    from music21 import clef, harmony, key, layout, meter, note, pitch, stream

    score = score.expandRepeats()
    melody = score.parts[0]
    for ks in list(melody.recurse().getElementsByClass(key.KeySignature)):
        ks.activeSite.remove(ks)
    measures = list(melody.getElementsByClass(stream.Measure))
    measures[0].insert(0, key.KeySignature(-1))

    first = measures[0]
    lead = first.notesAndRests.first()
    if isinstance(lead, note.Rest):
        shift = float(lead.quarterLength)
        first.remove(lead)
        for el in list(first.notesAndRests):
            first.setElementOffset(el, float(el.offset) - shift)
        for m in measures[1:]:
            melody.setElementOffset(m, float(m.offset) - shift)
        first.paddingLeft = shift

    chords = [(float(m.offset + cs.offset), cs) for m in measures for cs in m.getElementsByClass(harmony.ChordSymbol)]
    for m in measures:
        for cs in list(m.getElementsByClass(harmony.ChordSymbol)):
            m.remove(cs)

    def voicing(cs) -> list[pitch.Pitch]:
        """Root, fifth, third, fifth, spelled as the chord symbol spells them, root in C3..B3."""
        root = 48 + cs.root().pitchClass
        out = []
        for member in (cs.root(), cs.fifth, cs.third, cs.fifth):
            p = pitch.Pitch(member.name)
            p.octave = 3
            p.octave += (root + (member.pitchClass - cs.root().pitchClass) % 12 - p.midi) // 12
            out.append(p)
        return out

    left = stream.PartStaff()
    right = stream.PartStaff()
    for m in measures:
        offset = float(m.offset)
        melody.remove(m)
        right.insert(offset, m)
        bass = stream.Measure(number=m.number)
        if m is measures[0]:
            bass.insert(0, clef.BassClef())
            bass.insert(0, key.KeySignature(-1))
            bass.insert(0, meter.TimeSignature(m.timeSignature.ratioString))
            bass.paddingLeft = m.paddingLeft
        length = float(m.duration.quarterLength)
        t = 0.0
        while t < length - 1e-9:
            at = offset + t
            current = [cs for off, cs in chords if off <= at + 1e-9]
            if current:
                el = note.Note(voicing(current[-1])[round(t / 0.5) % 4], quarterLength=0.5)
            else:
                el = note.Rest(quarterLength=0.5)
            bass.insert(t, el)
            t += 0.5
        left.insert(offset, bass)
    right.partName = left.partName = "Piano"
    out = stream.Score()
    out.metadata = score.metadata
    out.insert(0, right)
    out.insert(0, left)
    out.insert(0, layout.StaffGroup([right, left], name="Piano", symbol="brace"))
    return out


ARRANGEMENTS: dict[str, Callable] = {"alberti": _alberti_arrangement}

DEV_SET: tuple[PieceSpec, ...] = (
    PieceSpec("bwv269", "Aus meines Herzens Grunde (BWV 269)", "J. S. Bach", "bach/bwv269", None, "chorale", 90),
    PieceSpec("bwv102.7", "Chorale BWV 102.7", "J. S. Bach", "bach/bwv102.7", None, "chorale", 84),
    PieceSpec("bwv10.7", "Chorale BWV 10.7", "J. S. Bach", "bach/bwv10.7", None, "chorale", 96),
    PieceSpec("bwv145.5", "Chorale BWV 145.5", "J. S. Bach", "bach/bwv145.5", None, "chorale", 100),
    PieceSpec("bwv117.4", "Chorale BWV 117.4", "J. S. Bach", "bach/bwv117.4", None, "chorale", (92, 100)),
    PieceSpec("bwv148.6", "Chorale BWV 148.6", "J. S. Bach", "bach/bwv148.6", None, "chorale", 80),
    PieceSpec(
        "lift_every_voice",
        "Lift Every Voice and Sing",
        "J. Rosamond Johnson",
        "johnson_j_r/lift_every_voice.mxl",
        None,
        "hymn (4 voices)",
        96,
    ),
    PieceSpec(
        "polonaise",
        "Polonaise op. 1 no. 1",
        "Clara Schumann",
        "schumann_clara/polonaise_op1n1.mxl",
        None,
        "piano",
        96,
        velocities=72,
    ),
    PieceSpec(
        "dichterliebe2",
        "Aus meinen Tränen sprießen (Dichterliebe no. 2)",
        "Robert Schumann",
        "schumann_robert/opus48no2.mxl",
        None,
        "voice + piano",
        60,
        velocities=(96, 64, 64),
    ),
    PieceSpec(
        "lindenbaum",
        "Der Lindenbaum",
        "Franz Schubert",
        "schubert/Lindenbaum.xml",
        None,
        "voice + piano",
        84,
        velocities=(96, 64, 64),
    ),
    PieceSpec(
        "jeanie_alberti",
        "Jeanie with the Light Brown Hair",
        "Stephen Foster",
        "leadSheet/fosterBrownHair.mxl",
        None,
        "melody + Alberti bass",
        (84, 96, 86),
        velocities=(96, 60),
        arrangement="alberti",
    ),
    PieceSpec(
        "connachtmans_rambles",
        "The Connachtman's Rambles",
        "trad. (O'Neill's 1003)",
        "oneills1850/1001-1031.abc",
        1003,
        "melody",
        144,
        programs=FLUTE,
        velocities=96,
    ),
    PieceSpec(
        "dan_rogers",
        "Dan Rogers' Jig",
        "trad. (O'Neill's 787)",
        "oneills1850/0759-0810.abc",
        787,
        "melody",
        (150, 138),
        programs=FLUTE,
        velocities=96,
    ),
    PieceSpec(
        "funny_mistake",
        "The Funny Mistake",
        "trad. (O'Neill's 1146)",
        "oneills1850/1136-1175.abc",
        1146,
        "melody",
        168,
        programs=FLUTE,
        velocities=96,
    ),
    PieceSpec(
        "friars_hill",
        "The Friar's Hill",
        "trad. (O'Neill's 10)",
        "oneills1850/0001-0050.abc",
        10,
        "melody",
        100,
        velocities=90,
    ),
    PieceSpec(
        "hinaus_in_die_ferne",
        "Hinaus in die Ferne",
        "trad. (Essen, Böhme 38)",
        "essenFolksong/boehme10.abc",
        38,
        "melody",
        108,
        velocities=90,
    ),
)


# --------------------------------------------------------------------------- held out


@lru_cache(maxsize=1)
def _held_out_chorales() -> frozenset[str]:
    from music21 import corpus

    paths = sorted(corpus.getComposer("bach"))
    return frozenset(
        Path(p).name.split(".mxl")[0].split(".xml")[0].split(".krn")[0]
        for k, p in enumerate(paths)
        if k % 37 in HELD_OUT_CHORALE_RESIDUES
    )


def _title_key(title: str) -> str:
    title = re.sub(r"\s+--\s+\w+$", "", title.lower())  # Ryan's "Name -- Jig"
    words = [w for w in re.sub(r"[^a-z0-9 ]", " ", title).split() if w != "the"]
    return " ".join(words)


@lru_cache(maxsize=1)
def _ryans_mammoth_titles() -> frozenset[str]:
    from music21 import corpus

    root = Path(corpus.__file__).parent / "ryansMammoth"
    titles = set()
    for path in root.glob("*.abc"):
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("T:"):
                titles.add(_title_key(line[2:]))
    return frozenset(titles)


def check_not_held_out(spec: PieceSpec, corpus_title: str | None = None) -> None:
    """Raise AssertionError if ``spec`` (or the tune's corpus title) is held out."""
    source = spec.source.lower()
    assert not any(h in source for h in HELD_OUT_SOURCES), f"{spec.name}: {spec.source} is held out"
    if source.startswith("bach/"):
        stem = spec.source.split("/", 1)[1].split(".mxl")[0].split(".xml")[0]
        assert stem not in _held_out_chorales(), f"{spec.name}: chorale {stem} is held out"
    for title in filter(None, (spec.title, corpus_title)):
        assert _title_key(title) not in _ryans_mammoth_titles(), (
            f"{spec.name}: {title!r} is a tune of Ryan's Mammoth Collection (held out)"
        )


for _spec in DEV_SET:  # a held-out piece must never slip into the dev set
    check_not_held_out(_spec)


# --------------------------------------------------------------------------- rendering + cache


def _code_hash() -> str:
    h = hashlib.sha256()
    for path in (Path(media.__file__), Path(__file__)):
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


def _spec_key(spec: PieceSpec) -> str:
    return hashlib.sha256((repr(spec) + _code_hash()).encode()).hexdigest()[:16]


def _render(spec: PieceSpec, out: Path) -> None:
    score = media.load_score(spec.source, spec.number)
    corpus_title = score.metadata.title if score.metadata else None
    check_not_held_out(spec, corpus_title)
    if spec.arrangement:
        score = ARRANGEMENTS[spec.arrangement](score)
    truth, tempo_map = media.prepare_score(score, tempo=spec.tempo, max_seconds=spec.max_seconds, title=spec.title)
    truth.metadata.composer = spec.composer
    n_parts = len(truth.parts)

    def listify(v):
        return list(v) if isinstance(v, tuple) else [v] * n_parts

    piece = media.render_score(
        out,
        truth,
        tempo_map,
        name=spec.name,
        source=spec.source,
        programs=listify(spec.programs),
        velocities=listify(spec.velocities),
    )
    truth.write("musicxml", out / "truth.musicxml")
    last_ql = max(float(n.offset) + float(n.quarterLength) for n in truth.flatten().notes)
    meta = {
        "key": _spec_key(spec),
        "intervals": piece.intervals.tolist(),
        "pitches": piece.pitches.tolist(),
        "lead_in_s": piece.lead_in_s,
        "time_signature": piece.time_signature,
        "pickup_ql": piece.pickup_beats,
        "tempo_changes": [list(c) for c in tempo_map.changes],
        "initial_bpm": tempo_map.initial_bpm,
        "mean_bpm": tempo_map.mean_bpm(last_ql),
        "duration_s": piece.duration_s,
    }
    (out / "truth.json").write_text(json.dumps(meta))


def load(spec: PieceSpec, cache: Path) -> DevPiece:
    """The rendered piece, rendering it first unless the cache holds this spec's render."""
    out = cache / "renders" / spec.name
    meta_path = out / "truth.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else None
    if meta is None or meta.get("key") != _spec_key(spec):
        out.mkdir(parents=True, exist_ok=True)
        _render(spec, out)
        meta = json.loads(meta_path.read_text())
    return DevPiece(
        spec=spec,
        wav=out / f"{spec.name}.wav",
        truth_xml=out / "truth.musicxml",
        intervals=np.array(meta["intervals"], dtype=float).reshape(-1, 2),
        pitches=np.array(meta["pitches"], dtype=int),
        lead_in_s=meta["lead_in_s"],
        time_signature=meta["time_signature"],
        pickup_ql=meta["pickup_ql"],
        tempo_changes=[tuple(c) for c in meta["tempo_changes"]],
        initial_bpm=meta["initial_bpm"],
        mean_bpm=meta["mean_bpm"],
        duration_s=meta["duration_s"],
    )


def describe(piece: DevPiece) -> dict:
    """One row of the dev-set list: source, meter, pickup, texture, tempo/drift, seconds."""
    spec = piece.spec
    tempo = (
        f"{piece.tempo_changes[0][1]:g} -> {piece.tempo_changes[-1][1]:g} (max "
        f"{max(b for _, b in piece.tempo_changes):g}), mean {piece.mean_bpm:.1f}"
        if piece.drift
        else f"{piece.initial_bpm:g}"
    )
    return {
        "piece": spec.name,
        "title": spec.title,
        "source": spec.source + (f" #{spec.number}" if spec.number else ""),
        "meter": piece.time_signature,
        "pickup_ql": piece.pickup_ql,
        "texture": spec.texture + (" (arranged: " + spec.arrangement + ")" if spec.arrangement else ""),
        "instrument": "flute" if spec.programs == FLUTE else "piano",
        "tempo_bpm": tempo,
        "seconds": round(piece.duration_s, 1),
        "spec": asdict(spec),
    }
