"""Real test media with exact ground truth, made by the tests themselves.

Everything here is deterministic: a score from music21's corpus (public-domain
Bach chorales) is turned into a MIDI file with pretty_midi, rendered with the
``fluidsynth`` command line and a General MIDI soundfont, and the ground truth is
read back from that same MIDI file, so it is exactly what was rendered.

Other helpers encode WAVs to compressed formats with PyAV (no system ffmpeg
needed) and build broken / edge-case inputs (truncated files, HTML, silence,
odd sample rates and channel counts, over-long files).

This module only needs numpy, music21, pretty_midi, PyAV, the ``fluidsynth``
binary and a soundfont (Debian: ``fluidsynth`` + ``fluid-soundfont-gm`` or
``timgm6mb-soundfont``).
"""

from __future__ import annotations

import csv
import math
import os
import shutil
import struct
import subprocess
import threading
import wave
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CONTENT_TYPES",
    "FORMATS",
    "SAMPLE_RATE",
    "FeedItem",
    "MediaServer",
    "RenderedPiece",
    "RequestRecord",
    "TempoMap",
    "available_encoders",
    "decode_info",
    "encode",
    "find_fluidsynth",
    "find_soundfont",
    "has_xing_header",
    "load_score",
    "make_broken_inputs",
    "make_long_mp3",
    "prepare_score",
    "read_truth_csv",
    "read_wav",
    "render_band_mix",
    "render_chorale",
    "render_score",
    "split_mp3_frames",
    "write_rss_feed",
    "write_wav",
]

SAMPLE_RATE = 44100

# Where Debian/Ubuntu and other distributions put General MIDI soundfonts.
_SOUNDFONT_DIRS = (
    Path("/usr/share/sounds/sf2"),
    Path("/usr/share/soundfonts"),
    Path("/usr/share/sounds/sf3"),
    Path("/usr/local/share/soundfonts"),
)
# Preference order: FluidR3 (MIT, 141 MiB, best piano), the distribution default,
# then TimGM6mb (GPL-2, small).
_SOUNDFONT_NAMES = ("FluidR3_GM.sf2", "default-GM.sf2", "default.sf2", "TimGM6mb.sf2")

# GM percussion keys (channel 10).
KICK, SNARE, CLOSED_HAT = 36, 38, 42


# ---------------------------------------------------------------------------
# tools
# ---------------------------------------------------------------------------


def find_soundfont() -> Path:
    """Path of a General MIDI soundfont.

    ``$RESCORED_SOUNDFONT`` wins if set; otherwise FluidR3_GM.sf2 or
    default-GM.sf2, then TimGM6mb.sf2, under /usr/share/sounds/sf2 or
    /usr/share/soundfonts.
    """
    env = os.environ.get("RESCORED_SOUNDFONT")
    if env:
        p = Path(env)
        if p.is_file():
            return p
        raise RuntimeError(f"RESCORED_SOUNDFONT={env!r} is not a file")
    for name in _SOUNDFONT_NAMES:
        for d in _SOUNDFONT_DIRS:
            p = d / name
            if p.is_file():  # follows the default-GM.sf2 alternatives symlink
                return p
    raise RuntimeError(
        "No General MIDI soundfont found (looked for "
        f"{', '.join(_SOUNDFONT_NAMES)} in {', '.join(map(str, _SOUNDFONT_DIRS))}). "
        "Install one: `apt-get install fluidsynth fluid-soundfont-gm` "
        "(or `timgm6mb-soundfont`), or set RESCORED_SOUNDFONT=/path/to/file.sf2."
    )


def find_fluidsynth() -> str:
    exe = shutil.which("fluidsynth")
    if not exe:
        raise RuntimeError(
            "The `fluidsynth` program is needed to render test audio: `apt-get install fluidsynth fluid-soundfont-gm`."
        )
    return exe


# ---------------------------------------------------------------------------
# ground truth
# ---------------------------------------------------------------------------


@dataclass
class RenderedPiece:
    """A rendered WAV plus the exact notes that produced it.

    ``intervals``/``pitches``/``velocities`` hold every pitched (non-drum) note,
    sorted by (onset, pitch), in seconds from the start of the WAV; they can be
    passed straight to ``mir_eval.transcription``.  Same-pitch notes never
    overlap (unisons between voices are merged before rendering), so the
    ground truth has no notes a transcriber could not possibly separate.
    """

    name: str
    path: Path  # WAV, 44.1 kHz, stereo, 16-bit PCM
    midi_path: Path
    tempo_bpm: float
    duration_s: float  # length of the WAV
    intervals: np.ndarray  # (N, 2) float64 seconds [onset, offset]
    pitches: np.ndarray  # (N,) int MIDI note numbers
    velocities: np.ndarray  # (N,) int
    instruments: np.ndarray  # (N,) str, instrument (track) name of each note
    programs: dict[str, int]  # instrument name -> GM program (0-based)
    drum_hits: np.ndarray  # (M, 2) [time_s, GM drum key]; empty if no drums
    source: str  # music21 corpus name
    soundfont: Path
    lead_in_s: float  # silence before beat 0 of the score
    time_signature: str = "4/4"
    pickup_beats: float = 0.0  # length of the anacrusis, in quarter notes
    sample_rate: int = SAMPLE_RATE
    channels: int = 2
    extra: dict = field(default_factory=dict)
    tempo_map: TempoMap | None = None  # set by render_score; tempo_bpm is then its first tempo

    @property
    def n_notes(self) -> int:
        return len(self.pitches)

    @property
    def onsets(self) -> np.ndarray:
        return self.intervals[:, 0]

    @property
    def first_onset_s(self) -> float:
        return float(self.intervals[:, 0].min())

    @property
    def last_offset_s(self) -> float:
        return float(self.intervals[:, 1].max())

    @property
    def seconds_per_beat(self) -> float:
        return 60.0 / self.tempo_bpm

    @property
    def notes_by_instrument(self) -> dict[str, np.ndarray]:
        """instrument name -> (n, 3) array of [onset_s, offset_s, pitch]."""
        out = {}
        for name in self.programs:
            m = self.instruments == name
            out[name] = np.column_stack([self.intervals[m], self.pitches[m]])
        return out

    @property
    def notes_by_program(self) -> dict[int, np.ndarray]:
        """GM program -> (n, 3) array of [onset_s, offset_s, pitch]."""
        out: dict[int, np.ndarray] = {}
        for prog in sorted(set(self.programs.values())):
            names = [n for n, p in self.programs.items() if p == prog]
            m = np.isin(self.instruments, names)
            out[prog] = np.column_stack([self.intervals[m], self.pitches[m]])
        return out

    def truth_rows(self) -> list[tuple[float, float, int]]:
        return [(float(a), float(b), int(p)) for (a, b), p in zip(self.intervals, self.pitches, strict=False)]

    def write_truth_csv(self, path: str | os.PathLike) -> Path:
        """``onset_s,offset_s,pitch`` with a header row, 6 decimals."""
        path = Path(path)
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["onset_s", "offset_s", "pitch"])
            for a, b, p in self.truth_rows():
                w.writerow([f"{a:.6f}", f"{b:.6f}", p])
        return path


def read_truth_csv(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :meth:`RenderedPiece.write_truth_csv`: (intervals, pitches)."""
    with Path(path).open() as f:
        rows = list(csv.DictReader(f))
    iv = np.array([[float(r["onset_s"]), float(r["offset_s"])] for r in rows]).reshape(-1, 2)
    p = np.array([int(r["pitch"]) for r in rows], dtype=int)
    return iv, p


# ---------------------------------------------------------------------------
# score -> notes
# ---------------------------------------------------------------------------


@dataclass
class _Note:
    onset: float  # seconds
    offset: float
    pitch: int
    velocity: int
    inst: str


_M21_LOCK = threading.Lock()


def _load_score(name: str):
    return load_score(name)


def load_score(name: str, number: int | None = None):
    """A music21 corpus score; ``number`` picks one tune of a collection (an ABC opus)."""
    from music21 import corpus as m21corpus

    # music21's corpus cache is not safe to fill from several threads at once.
    with _M21_LOCK:
        return m21corpus.parse(name, number=number)


def _score_voices(score) -> tuple[list[tuple[str, list[tuple[float, float, int]]]], list[float], str, float]:
    """[(part name, [(onset_ql, offset_ql, pitch)])], measure offsets (ql), time sig, pickup (ql)."""
    voices = []
    for i, part in enumerate(score.parts):
        name = part.partName or f"Part{i + 1}"
        notes = []
        for n in part.stripTies().flatten().notes:
            ql = float(n.quarterLength)
            if ql <= 0 or n.duration.isGrace:
                continue
            on = float(n.offset)
            for p in n.pitches:
                notes.append((on, on + ql, int(p.midi)))
        voices.append((name, notes))
    measures = list(score.parts[0].getElementsByClass("Measure"))
    moffs = [float(m.offset) for m in measures]
    ts = score.flatten().getElementsByClass("TimeSignature")
    ts_str = ts[0].ratioString if len(ts) else "4/4"
    pickup = 0.0
    if measures and measures[0].number == 0 and len(measures) > 1:
        pickup = float(measures[1].offset - measures[0].offset)
    return voices, moffs, ts_str, pickup


def _cut_ql(
    moffs: list[float], total_ql: float, spb: float, lead_in_s: float, tail_s: float, max_seconds: float | None
) -> float:
    """Score position (ql) to stop at so that the WAV is at most max_seconds long.

    Prefers the last barline that fits; falls back to the exact time.
    """
    if max_seconds is None:
        return total_ql
    limit_ql = (max_seconds - lead_in_s - tail_s) / spb
    if limit_ql >= total_ql:
        return total_ql
    if limit_ql <= 0:
        raise ValueError(f"max_seconds={max_seconds} leaves no room for music")
    bars = [o for o in moffs if 0 < o <= limit_ql + 1e-9]
    return bars[-1] if bars else limit_ql


def _merge_unisons(notes: list[_Note]) -> list[_Note]:
    """Remove same-pitch overlaps (across all pitched instruments).

    Same onset: keep the longer note (ties: first instrument).  Later onset while
    the earlier note still sounds: end the earlier note at the new onset.
    """
    notes = sorted(notes, key=lambda n: (n.onset, n.pitch, -n.offset))
    active: dict[int, _Note] = {}
    kept: list[_Note] = []
    for n in notes:
        prev = active.get(n.pitch)
        if prev is not None and n.onset < prev.offset - 1e-9:
            if abs(n.onset - prev.onset) < 1e-9:
                continue  # unison with identical onset: drop the shorter/duplicate
            prev.offset = n.onset
        kept.append(n)
        active[n.pitch] = n
    return [n for n in kept if n.offset - n.onset > 1e-6]


# ---------------------------------------------------------------------------
# WAV I/O (stdlib + numpy; fluidsynth writes 32-bit float)
# ---------------------------------------------------------------------------


def read_wav(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Read PCM16/PCM24/PCM32/float32 WAV -> (float32 array (frames, channels), rate)."""
    data = Path(path).read_bytes()
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError(f"{path}: not a RIFF/WAVE file")
    pos, fmt, payload = 12, None, None
    while pos + 8 <= len(data):
        cid, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        body = data[pos + 8 : pos + 8 + size]
        if cid == b"fmt ":
            tag, ch, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
            if tag == 0xFFFE:  # WAVE_FORMAT_EXTENSIBLE: subformat GUID starts at 24
                tag = struct.unpack("<H", body[24:26])[0]
            fmt = (tag, ch, rate, bits)
        elif cid == b"data":
            payload = body
            break
        pos += 8 + size + (size & 1)
    if fmt is None or payload is None:
        raise ValueError(f"{path}: missing fmt or data chunk")
    tag, ch, rate, bits = fmt
    frame = ch * bits // 8
    payload = payload[: len(payload) // frame * frame]
    if tag == 3 and bits == 32:
        x = np.frombuffer(payload, "<f4").astype(np.float32)
    elif tag == 1 and bits == 16:
        x = np.frombuffer(payload, "<i2").astype(np.float32) / 32768.0
    elif tag == 1 and bits == 32:
        x = (np.frombuffer(payload, "<i4").astype(np.float64) / 2**31).astype(np.float32)
    elif tag == 1 and bits == 24:
        b = np.frombuffer(payload, np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        v = np.where(v >= 1 << 23, v - (1 << 24), v)
        x = (v / float(1 << 23)).astype(np.float32)
    else:
        raise ValueError(f"{path}: unsupported WAV format tag={tag} bits={bits}")
    return x.reshape(-1, ch), rate


def write_wav(path: str | os.PathLike, x: np.ndarray, rate: int) -> Path:
    """Write float audio in [-1, 1] (frames,) or (frames, channels) as 16-bit PCM."""
    path = Path(path)
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    pcm = np.clip(np.round(x * 32767.0), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(x.shape[1])
        w.setsampwidth(2)
        w.setframerate(int(rate))
        w.writeframes(pcm.tobytes())
    return path


# ---------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------


def _render(
    out_dir: Path,
    name: str,
    tracks: list[tuple[str, int, bool, list[_Note]]],  # (inst name, program, is_drum, notes)
    tempo_bpm: float,
    end_s: float,
    tail_s: float,
    soundfont: str | os.PathLike | None,
    gain: float,
    normalize_dbfs: float | None,
    meta: dict,
) -> RenderedPiece:
    import pretty_midi

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sf = Path(soundfont) if soundfont else find_soundfont()
    exe = find_fluidsynth()

    pm = pretty_midi.PrettyMIDI(resolution=960, initial_tempo=float(tempo_bpm))
    written = 0
    for iname, program, is_drum, notes in tracks:
        inst = pretty_midi.Instrument(program=program, is_drum=is_drum, name=iname)
        for n in notes:
            inst.notes.append(pretty_midi.Note(n.velocity, n.pitch, n.onset, n.offset))
            written += 0 if is_drum else 1
        pm.instruments.append(inst)
    if len([t for t in tracks if not t[2]]) > 15:
        raise ValueError("too many pitched instruments for one MIDI port")
    # A harmless controller event past the end keeps the file (and so the
    # rendering) running through the release tail of the last notes.
    pm.instruments[0].control_changes.append(pretty_midi.ControlChange(64, 0, end_s + tail_s))
    midi_path = out_dir / f"{name}.mid"
    pm.write(str(midi_path))

    # Ground truth: read back the very file that fluidsynth renders.
    back = pretty_midi.PrettyMIDI(str(midi_path))
    rows, drums, programs = [], [], {}
    for inst in back.instruments:
        if inst.is_drum:
            drums += [(n.start, n.pitch) for n in inst.notes]
            continue
        programs[inst.name] = int(inst.program)
        rows += [(n.start, n.end, n.pitch, n.velocity, inst.name) for n in inst.notes]
    if len(rows) != written:
        raise AssertionError(f"MIDI round trip changed the note count: wrote {written}, read {len(rows)}")
    rows.sort(key=lambda r: (r[0], r[2], r[1]))
    drums.sort()

    raw = out_dir / f".{name}.fluidsynth.wav"
    cmd = [
        exe,
        "-n",
        "-i",
        "-q",
        "-R",
        "0",
        "-C",
        "0",
        "-g",
        str(gain),
        "-r",
        str(SAMPLE_RATE),
        "-T",
        "wav",
        "-O",
        "float",
        "-F",
        str(raw),
        str(sf),
        str(midi_path),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if res.returncode != 0 or not raw.exists():
        raise RuntimeError(f"fluidsynth failed ({res.returncode}): {' '.join(cmd)}\n{res.stderr[-2000:]}")
    x, rate = read_wav(raw)
    raw.unlink()
    assert rate == SAMPLE_RATE and x.shape[1] == 2, (rate, x.shape)

    # Keep a fixed release tail after the last note-off, fade the last 50 ms.
    n_keep = min(len(x), round((end_s + tail_s) * rate))
    x = x[:n_keep].astype(np.float64)
    fade = min(int(0.05 * rate), n_keep)
    x[n_keep - fade :] *= np.linspace(1.0, 0.0, fade)[:, None]
    peak = float(np.abs(x).max())
    if peak == 0:
        raise RuntimeError(f"fluidsynth rendered silence for {midi_path} with {sf}")
    if normalize_dbfs is not None:
        x *= 10 ** (normalize_dbfs / 20) / peak
    elif peak > 1.0:
        x /= peak
    wav = write_wav(out_dir / f"{name}.wav", x, rate)

    return RenderedPiece(
        name=name,
        path=wav,
        midi_path=midi_path,
        tempo_bpm=float(tempo_bpm),
        duration_s=n_keep / rate,
        intervals=np.array([[r[0], r[1]] for r in rows], dtype=np.float64).reshape(-1, 2),
        pitches=np.array([r[2] for r in rows], dtype=int),
        velocities=np.array([r[3] for r in rows], dtype=int),
        instruments=np.array([r[4] for r in rows], dtype=object),
        programs=programs,
        drum_hits=np.array(drums, dtype=np.float64).reshape(-1, 2),
        soundfont=sf,
        sample_rate=rate,
        channels=2,
        **meta,
    )


def render_chorale(
    out_dir: str | os.PathLike,
    corpus: str = "bach/bwv66.6",
    tempo_bpm: float = 90,
    max_seconds: float | None = None,
    program: int = 0,
    *,
    name: str | None = None,
    soundfont: str | os.PathLike | None = None,
    velocity: int = 80,
    lead_in_s: float = 0.25,
    tail_s: float = 0.5,
    gain: float = 0.8,
    normalize_dbfs: float | None = -1.0,
) -> RenderedPiece:
    """Render a music21 corpus score, every part on GM ``program`` (0 = piano).

    Writes ``<name>.mid`` and ``<name>.wav`` into ``out_dir`` (name defaults to
    the corpus name's last component, e.g. ``bwv66.6``).  Timing is straight
    (fermatas ignored) at ``tempo_bpm`` quarter notes per minute, starting
    ``lead_in_s`` into the file; the WAV ends ``tail_s`` after the last note-off.
    ``max_seconds`` caps the WAV length, cutting at the last barline that fits.
    Each voice is its own MIDI track/channel, named after the part.
    """
    score = _load_score(corpus)
    voices, moffs, ts, pickup = _score_voices(score)
    spb = 60.0 / tempo_bpm
    total_ql = max(off for _, ns in voices for _, off, _ in ns)
    cut = _cut_ql(moffs, total_ql, spb, lead_in_s, tail_s, max_seconds)
    notes = []
    for vname, ns in voices:
        for on, off, p in ns:
            if on < cut - 1e-9:
                notes.append(_Note(lead_in_s + on * spb, lead_in_s + min(off, cut) * spb, p, velocity, vname))
    notes = _merge_unisons(notes)
    names = [v for v, _ in voices]
    tracks = [(v, program, False, [n for n in notes if n.inst == v]) for v in names]
    tracks = [t for t in tracks if t[3]]
    end_s = max(n.offset for n in notes)
    return _render(
        Path(out_dir),
        name or corpus.rsplit("/", 1)[-1],
        tracks,
        tempo_bpm,
        end_s,
        tail_s,
        soundfont,
        gain,
        normalize_dbfs,
        {"source": corpus, "lead_in_s": lead_in_s, "time_signature": ts, "pickup_beats": pickup},
    )


def _drum_pattern(start_s: float, end_s: float, spb: float, beats_per_bar: int) -> list[_Note]:
    """Kick on beats 1 (and 3 in 4/4), snare on the other beats, closed hat on eighths."""
    hits = []
    n_eighths = math.floor((end_s - start_s) / (spb / 2) + 1e-9)
    for k in range(n_eighths):
        t = start_s + k * spb / 2
        hits.append(_Note(t, t + 0.1, CLOSED_HAT, 60 if k % 2 else 75, "Drums"))
        if k % 2 == 0:
            beat = (k // 2) % beats_per_bar
            kick_beats = {0, 2} if beats_per_bar == 4 else {0}
            key, vel = (KICK, 100) if beat in kick_beats else (SNARE, 90)
            hits.append(_Note(t, t + 0.1, key, vel, "Drums"))
    return hits


def render_band_mix(
    out_dir: str | os.PathLike,
    corpus: str = "bach/bwv66.6",
    tempo_bpm: float = 100,
    max_seconds: float | None = 18.0,
    *,
    name: str = "mix",
    piano_program: int = 0,
    bass_program: int = 33,
    bass_transpose: int = 0,
    drums: bool = True,
    soundfont: str | os.PathLike | None = None,
    lead_in_s: float = 0.25,
    tail_s: float = 0.5,
    gain: float = 0.8,
    normalize_dbfs: float | None = -1.0,
) -> RenderedPiece:
    """A short band: chorale upper voices on piano, its bass voice on a bass
    guitar (GM 33 = fingered bass), plus kick/snare/hi-hat on channel 10 from
    the first full bar.  Ground truth (``intervals``/``pitches``) holds the
    pitched notes of both instruments ("Piano", "Bass"); drum hits are in
    ``drum_hits``.
    """
    score = _load_score(corpus)
    voices, moffs, ts, pickup = _score_voices(score)
    spb = 60.0 / tempo_bpm
    total_ql = max(off for _, ns in voices for _, off, _ in ns)
    cut = _cut_ql(moffs, total_ql, spb, lead_in_s, tail_s, max_seconds)
    bass_idx = len(voices) - 1
    notes = []
    for i, (_, ns) in enumerate(voices):
        is_bass = i == bass_idx
        for on, off, p in ns:
            if on < cut - 1e-9:
                notes.append(
                    _Note(
                        lead_in_s + on * spb,
                        lead_in_s + min(off, cut) * spb,
                        p + (bass_transpose if is_bass else 0),
                        100 if is_bass else 72,
                        "Bass" if is_bass else "Piano",
                    )
                )
    notes = _merge_unisons(notes)
    end_s = max(n.offset for n in notes)
    tracks = [
        ("Piano", piano_program, False, [n for n in notes if n.inst == "Piano"]),
        ("Bass", bass_program, False, [n for n in notes if n.inst == "Bass"]),
    ]
    if drums:
        beats_per_bar = int(ts.split("/")[0]) if ts.split("/")[0].isdigit() else 4
        tracks.append(("Drums", 0, True, _drum_pattern(lead_in_s + pickup * spb, end_s, spb, beats_per_bar)))
    return _render(
        Path(out_dir),
        name,
        tracks,
        tempo_bpm,
        end_s,
        tail_s,
        soundfont,
        gain,
        normalize_dbfs,
        {"source": corpus, "lead_in_s": lead_in_s, "time_signature": ts, "pickup_beats": pickup},
    )


# ---------------------------------------------------------------------------
# any score: repeats expanded, tempo maps (drift)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TempoMap:
    """Quarter-note tempo, constant from each change to the next.

    Stepwise rather than continuous so that a score can carry it exactly as metronome
    marks: what was rendered and what the written truth plays back then agree.
    ``changes`` is ((offset in quarter notes, quarter-note bpm), ...), the first at 0.
    """

    changes: tuple[tuple[float, float], ...]

    @classmethod
    def across(cls, bar_offsets: list[float], anchors: float | tuple[float, ...], unit: float = 1.0) -> TempoMap:
        """One tempo per bar, piecewise linear through ``anchors`` (quarter-note bpm) spread
        evenly from the first bar to the last: (92, 100) ramps, (88, 100, 90) speeds up and
        slows down. Each tempo is rounded to 0.01 beats per minute of ``unit`` quarter notes
        (1.5 for a dotted-quarter beat), the precision a metronome mark is written with."""
        anchors = (anchors,) if isinstance(anchors, (int, float)) else tuple(anchors)
        n = len(bar_offsets)
        if n == 0:
            raise ValueError("no bars")
        at = (
            np.interp(np.arange(n), np.linspace(0, n - 1, len(anchors)), anchors)
            if len(anchors) > 1
            else np.full(n, float(anchors[0]))
        )
        changes: list[tuple[float, float]] = []
        for offset, bpm in zip(bar_offsets, at, strict=False):
            bpm = round(float(bpm) / unit, 2) * unit
            if not changes or changes[-1][1] != bpm:
                changes.append((float(offset), bpm))
        return cls(tuple(changes))

    @property
    def initial_bpm(self) -> float:
        return self.changes[0][1]

    def seconds(self, ql: float) -> float:
        """Seconds from the score's start to position ``ql`` (quarter notes)."""
        t = 0.0
        for i, (start, bpm) in enumerate(self.changes):
            end = self.changes[i + 1][0] if i + 1 < len(self.changes) else math.inf
            if ql <= start:
                break
            t += (min(ql, end) - start) * 60.0 / bpm
        return t

    def mean_bpm(self, end_ql: float) -> float:
        """Quarter notes per minute over [0, end_ql]: the one tempo that takes as long."""
        return 60.0 * end_ql / self.seconds(end_ql)


def _time_signature(measure):
    """The time signature in force in ``measure`` (its own, else the latest before it)."""
    return measure.timeSignature or measure.getContextByClass("TimeSignature")


def _bar_length(measure) -> float:
    ts = _time_signature(measure)
    return float(ts.barDuration.quarterLength) if ts is not None else 4.0


def _join_split_bars(score) -> None:
    """Join each bar that a repeat split in two (e.g. 2 + 1 beats of 3/4 around the repeat
    sign) back into one bar, as a player hears it once the repeat is written out. A split
    whose halves differ in voices in any part is left as it is, in every part alike."""
    from music21 import stream

    bars = [list(part.getElementsByClass(stream.Measure)) for part in score.parts]
    joins: list[int] = []
    for i in range(1, len(bars[0]) - 1):
        a, b = bars[0][i], bars[0][i + 1]
        la, lb = float(a.duration.quarterLength), float(b.duration.quarterLength)
        bar = _bar_length(a)
        same_voices = all({v.id for v in ms[i].voices} == {v.id for v in ms[i + 1].voices} for ms in bars)
        if la < bar and lb < bar and abs(la + lb - bar) < 1e-9 and same_voices and (not joins or joins[-1] != i - 1):
            joins.append(i)
    for part, ms in zip(score.parts, bars, strict=False):
        for i in reversed(joins):
            a, b = ms[i], ms[i + 1]
            shift = float(a.duration.quarterLength)
            voices = {v.id: v for v in a.voices}
            for el in list(b):
                if "TimeSignature" in el.classes:
                    continue
                if "Voice" in el.classes:
                    for x in list(el):
                        voices[el.id].insert(shift + float(x.offset), x)
                else:
                    a.insert(shift + float(el.offset), el)
            part.remove(b)


def _strip_performance_marks(score) -> None:
    """Remove what a player (or MuseScore's playback) would perform differently from the
    written note values: grace notes, ornaments and fermatas, articulations, spanners
    (slurs, hairpins, trill lines), written tempi, repeat signs and D.C./segno marks."""
    from music21 import expressions, note, repeat, spanner, tempo

    for n in list(score.recurse().getElementsByClass(note.GeneralNote)):
        if n.duration.isGrace:
            n.activeSite.remove(n)
            continue
        n.expressions = []
        n.articulations = []
    drop = (tempo.TempoIndication, repeat.RepeatExpression, expressions.TextExpression, spanner.Spanner)
    for part in score.parts:
        for sp in list(part.spannerBundle):
            part.spannerBundle.remove(sp)
        for el in list(part.recurse().getElementsByClass(drop)):
            el.activeSite.remove(el)
        for m in part.getElementsByClass("Measure"):
            for side in ("leftBarline", "rightBarline"):
                if "Repeat" in getattr(getattr(m, side), "classes", ()):
                    setattr(m, side, None)


def _end_ties_at(measure) -> None:
    """Notes tied into a bar that was cut away end where the cut is."""
    from music21 import tie

    for n in measure.recurse().notes:
        for member in n.notes if n.isChord else (n,):
            if member.tie is not None and member.tie.type in ("start", "continue"):
                member.tie = tie.Tie("stop") if member.tie.type == "continue" else None
        if n.isChord and n.tie is not None and n.tie.type in ("start", "continue"):
            n.tie = tie.Tie("stop") if n.tie.type == "continue" else None


def prepare_score(
    score,
    *,
    tempo: float | tuple[float, ...],
    max_seconds: float | None = None,
    lead_in_s: float = 0.25,
    tail_s: float = 0.5,
    title: str | None = None,
):
    """A copy of ``score`` made into a ground truth that plays exactly as it is rendered.

    Sounding pitch; repeats expanded (a bar split by a repeat joined again); performance
    marks removed (see ``_strip_performance_marks``); cut at the last barline whose WAV
    (with ``lead_in_s`` and ``tail_s``) fits ``max_seconds``; a pickup written as an implicit
    measure 0; and the tempo written as metronome marks, one per bar where it changes:
    ``tempo`` is a quarter-note bpm, or anchors of a drift (see :meth:`TempoMap.across`).
    Compound meters get dotted-quarter marks. Returns ``(score, tempo_map)``.
    """
    from music21 import duration, metadata, stream
    from music21 import tempo as m21tempo

    score = score.toSoundingPitch(inPlace=False).expandRepeats()
    _strip_performance_marks(score)
    _join_split_bars(score)

    parts = list(score.parts)
    measures = list(parts[0].getElementsByClass(stream.Measure))
    offsets = [float(m.offset) for m in measures]
    ends = [*offsets[1:], float(parts[0].highestTime)]
    ts = _time_signature(measures[0])
    compound = ts is not None and ts.numerator % 3 == 0 and ts.numerator > 3
    unit = float(ts.beatDuration.quarterLength) if compound else 1.0
    keep = len(measures)
    tempo_map = TempoMap.across(offsets, tempo, unit)
    while max_seconds is not None and keep > 1:
        tempo_map = TempoMap.across(offsets[:keep], tempo, unit)
        if lead_in_s + tempo_map.seconds(ends[keep - 1]) + tail_s <= max_seconds:
            break
        keep -= 1

    pickup = float(measures[0].duration.quarterLength) < _bar_length(measures[0]) - 1e-9
    for part in parts:
        ms = list(part.getElementsByClass(stream.Measure))
        for m in ms[keep:]:
            part.remove(m)
        _end_ties_at(ms[keep - 1])
        for i, m in enumerate(ms[:keep]):
            m.number = i if pickup else i + 1
            m.showNumber = stream.enums.ShowNumber.NEVER if pickup and i == 0 else stream.enums.ShowNumber.DEFAULT
    for start, bpm in tempo_map.changes:
        bar = next(m for m in parts[0].getElementsByClass(stream.Measure) if abs(float(m.offset) - start) < 1e-9)
        bar.insert(0, m21tempo.MetronomeMark(number=round(bpm / unit, 2), referent=duration.Duration(unit)))
    if title:
        score.metadata = score.metadata or metadata.Metadata()
        score.metadata.title = title
    return score, tempo_map


def _sounding_notes(part) -> list[tuple[float, float, int]]:
    """(onset, offset, MIDI pitch) of every note ``part`` plays, quarter notes from its start.

    Ties are joined per pitch across chords and voices, as a player (and MuseScore) reads
    them: a tie start holds into the next note of its pitch that starts where it ends, with
    or without a tie stop there. music21's ``stripTies`` leaves a note tied into one member
    of a chord unjoined.
    """
    heads = []
    for n in part.flatten().notes:
        ql = float(n.quarterLength)
        if ql <= 0 or n.duration.isGrace:
            continue
        on = float(n.offset)
        for member in n.notes if n.isChord else (n,):
            tie_mark = member.tie or (n.tie if n.isChord else None)
            heads.append((on, on + ql, int(member.pitch.midi), tie_mark.type if tie_mark else None))
    heads.sort(key=lambda h: (h[0], h[2]))
    waiting: dict[int, list] = {}  # pitch -> [onset, offset, pitch] of a note whose tie goes on
    done: list[list] = []
    for on, off, pitch, tie_type in heads:
        prev = waiting.get(pitch)
        if prev is not None and abs(prev[1] - on) < 1e-6:  # a tie start holds into the next same pitch
            del waiting[pitch]
            prev[1] = off
            current = prev
        else:
            current = [on, off, pitch]
        if tie_type in ("start", "continue"):
            if pitch in waiting:
                done.append(waiting.pop(pitch))
            waiting[pitch] = current
        else:
            done.append(current)
    done.extend(waiting.values())
    return sorted((a, b, p) for a, b, p in done)


def render_score(
    out_dir: str | os.PathLike,
    score,
    tempo_map: TempoMap,
    *,
    name: str,
    source: str,
    programs: int | list[int] = 0,
    velocities: int | list[int] = 80,
    soundfont: str | os.PathLike | None = None,
    lead_in_s: float = 0.25,
    tail_s: float = 0.5,
    gain: float = 0.8,
    normalize_dbfs: float | None = -1.0,
) -> RenderedPiece:
    """Render a score made by :func:`prepare_score`, each part its own MIDI track.

    ``programs``/``velocities`` are one value for all parts or one per part. Note times
    follow ``tempo_map`` from ``lead_in_s`` on; ties are joined, unisons merged as in
    :func:`render_chorale`. ``tempo_bpm`` of the result is the first tempo; the whole map is
    ``tempo_map``.
    """
    parts = list(score.parts)
    programs = programs if isinstance(programs, list) else [programs] * len(parts)
    velocities = velocities if isinstance(velocities, list) else [velocities] * len(parts)
    names: list[str] = []
    notes: list[_Note] = []
    for i, part in enumerate(parts):
        base = part.partName or f"Part{i + 1}"
        pname = base if base not in names else f"{base} {i + 1}"
        names.append(pname)
        for on, off, pitch in _sounding_notes(part):
            notes.append(
                _Note(
                    lead_in_s + tempo_map.seconds(on), lead_in_s + tempo_map.seconds(off), pitch, velocities[i], pname
                )
            )
    notes = _merge_unisons(notes)
    tracks = [(pname, programs[i], False, [n for n in notes if n.inst == pname]) for i, pname in enumerate(names)]
    tracks = [t for t in tracks if t[3]]
    end_s = max(n.offset for n in notes)
    measures = list(parts[0].getElementsByClass("Measure"))
    ts = _time_signature(measures[0])
    first = float(measures[0].duration.quarterLength)
    pickup = first if first < _bar_length(measures[0]) - 1e-9 else 0.0
    return _render(
        Path(out_dir),
        name,
        tracks,
        tempo_map.initial_bpm,
        end_s,
        tail_s,
        soundfont,
        gain,
        normalize_dbfs,
        {
            "source": source,
            "lead_in_s": lead_in_s,
            "time_signature": ts.ratioString if ts else "4/4",
            "pickup_beats": pickup,
            "tempo_map": tempo_map,
        },
    )


# ---------------------------------------------------------------------------
# encoding with PyAV
# ---------------------------------------------------------------------------

# fmt -> (container format, codec, extension, sample format, default bit rate, options, allowed rates)
FORMATS: dict[str, tuple[str, str, str, str, int | None, dict, tuple[int, ...] | None]] = {
    # compression_level 5 = lame -q 5: good quality, ~35% faster than the default.
    "mp3": ("mp3", "libmp3lame", ".mp3", "s16p", 128_000, {"compression_level": "5"}, None),
    "flac": ("flac", "flac", ".flac", "s16", None, {}, None),
    # FFmpeg's native Vorbis encoder (this PyAV build has no libvorbis) is
    # flagged experimental; it only supports mono and stereo.
    "ogg": ("ogg", "vorbis", ".ogg", "fltp", 128_000, {"strict": "experimental"}, None),
    "opus": ("ogg", "libopus", ".opus", "flt", 96_000, {}, (48000, 24000, 16000, 12000, 8000)),
    "m4a": ("ipod", "aac", ".m4a", "fltp", 128_000, {}, None),
    "webm": ("webm", "libopus", ".webm", "flt", 96_000, {}, (48000, 24000, 16000, 12000, 8000)),
    "wav": ("wav", "pcm_s16le", ".wav", "s16", None, {}, None),
}


def available_encoders() -> dict[str, bool]:
    """fmt -> whether PyAV has both the codec and the container."""
    import av

    out = {}
    for fmt, (container, codec, *_rest) in FORMATS.items():
        try:
            av.codec.Codec(codec, "w")
            out[fmt] = container in av.formats_available
        except Exception:
            out[fmt] = False
    return out


def _layout(channels: int):
    import av

    return {1: "mono", 2: "stereo", 6: "5.1"}.get(channels) or av.AudioLayout(channels)  # type: ignore[arg-type]


def encode(
    wav_path: str | os.PathLike,
    fmt: str,
    out_path: str | os.PathLike | None = None,
    sample_rate: int | None = None,
    channels: int | None = None,
    *,
    bitrate: int | None = None,
) -> Path:
    """Encode an audio file (usually a WAV) to ``fmt`` with PyAV.

    fmt: mp3, flac, ogg (Vorbis), opus (Opus in Ogg), m4a (AAC in MP4), webm
    (Opus in WebM) or wav (16-bit PCM).  ``sample_rate``/``channels`` resample or
    remix (e.g. 8000 Hz mono, 96000 Hz, 6 channels = 5.1).  Opus only allows
    8/12/16/24/48 kHz: other rates become 48 kHz.  ``out_path`` defaults to the
    input path with the format's extension.
    """
    import av

    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {sorted(FORMATS)}")
    container_fmt, codec, ext, sample_fmt, default_br, options, rates = FORMATS[fmt]
    wav_path = Path(wav_path)
    out = Path(out_path) if out_path else wav_path.with_suffix(ext)
    if out.resolve() == wav_path.resolve():
        raise ValueError("out_path would overwrite the input")

    with av.open(str(wav_path)) as src:
        ist = src.streams.audio[0]
        rate = int(sample_rate or ist.codec_context.sample_rate)
        if rates and rate not in rates:
            rate = 48000
        nch = int(channels or ist.codec_context.channels)
        with av.open(str(out), "w", format=container_fmt) as dst:
            ost = dst.add_stream(codec, rate=rate, options=dict(options))
            ost.codec_context.layout = _layout(nch)
            ost.codec_context.format = sample_fmt
            br = bitrate or default_br
            if br:
                ost.codec_context.bit_rate = br
            # Resample explicitly so that channel-count changes are allowed.
            resampler = av.AudioResampler(format=sample_fmt, layout=_layout(nch), rate=rate)
            tb, n = Fraction(1, rate), 0

            def feed(frames):
                nonlocal n
                for f in frames:
                    # Real timestamps matter: with pts=None the AAC priming
                    # delay is not written to the MP4 edit list, and decoders
                    # then return 1024 extra samples at the start.
                    f.pts, f.time_base = n, tb
                    n += f.samples
                    dst.mux(ost.encode(f))

            for frame in src.decode(ist):
                frame.pts = None
                feed(resampler.resample(frame))
            feed(resampler.resample(None))
            dst.mux(ost.encode(None))
    return out


def decode_info(path: str | os.PathLike) -> dict:
    """Decode a file completely with PyAV: codec, rate, channels, samples, duration, rms."""
    import av

    n, sumsq, count = 0, 0.0, 0
    with av.open(str(path)) as c:
        st = c.streams.audio[0]
        rate, ch, codec = st.codec_context.sample_rate, st.codec_context.channels, st.codec_context.name
        for frame in c.decode(st):
            a = frame.to_ndarray().astype(np.float64)
            if frame.format.name.startswith("s16"):
                a /= 32768.0
            elif frame.format.name.startswith("s32"):
                a /= 2**31
            n += frame.samples
            sumsq += float((a * a).sum())
            count += a.size
        container = c.format.name
    return {
        "codec": codec,
        "container": container,
        "sample_rate": rate,
        "channels": ch,
        "samples": n,
        "duration_s": n / rate if rate else 0.0,
        "rms": math.sqrt(sumsq / count) if count else 0.0,
    }


def has_xing_header(path: str | os.PathLike) -> tuple[bool, int | None]:
    """(has a Xing/Info header, frame count it declares) for an MP3 file."""
    raw = Path(path).read_bytes()
    start = 0
    if raw[:3] == b"ID3":  # skip an ID3v2 tag (syncsafe size)
        sz = raw[6:10]
        start = 10 + ((sz[0] << 21) | (sz[1] << 14) | (sz[2] << 7) | sz[3])
    data = raw[start : start + 4096]
    for tag in (b"Xing", b"Info"):
        i = data.find(tag)
        if i >= 0:
            flags = struct.unpack(">I", data[i + 4 : i + 8])[0]
            frames = struct.unpack(">I", data[i + 8 : i + 12])[0] if flags & 1 else None
            return True, frames
    return False, None


_MP3_BITRATES = {  # kb/s for layer III: MPEG-1, MPEG-2/2.5
    1: (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    2: (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_MP3_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


def split_mp3_frames(data: bytes) -> list[bytes]:
    """Split a bare layer-III MPEG audio stream (no ID3 tag) into frames."""
    frames, i = [], 0
    while i + 4 <= len(data):
        h = int.from_bytes(data[i : i + 4], "big")
        if h >> 21 != 0x7FF or (h >> 17) & 3 != 1:
            raise ValueError(f"no layer-III frame header at byte {i}")
        ver, br_idx, sr_idx, pad = (h >> 19) & 3, (h >> 12) & 15, (h >> 10) & 3, (h >> 9) & 1
        br = _MP3_BITRATES[1 if ver == 3 else 2][br_idx] * 1000
        rate = _MP3_RATES[ver][sr_idx]
        n = (144 if ver == 3 else 72) * br // rate + pad
        frames.append(data[i : i + n])
        i += n
    return frames


def make_long_mp3(
    path: str | os.PathLike,
    seconds: float = 960.0,
    sample_rate: int = 8000,
    bitrate: int = 8000,
    level_dbfs: float = -30.0,
) -> Path:
    """A long, quiet mono tone as constant-bit-rate MP3 (960 s at 8 kb/s ~ 0.96 MB).

    Fast: a few seconds are encoded with the bit reservoir off, so every frame
    stands alone, and a tone of exactly 16 cycles per frame makes the
    steady-state frames byte-identical; the steady frame is then repeated to
    the requested length.  The file has no Xing header or ID3 tag; decoders
    read the duration from the constant bit rate (exact here).
    """
    import av

    path = Path(path)
    spf = 1152 if sample_rate >= 32000 else 576  # samples per frame
    freq = 16 * sample_rate / spf
    seed_n = 5 * sample_rate
    amp = 10 ** (level_dbfs / 20) * 32767
    tone = (amp * np.sin(2 * np.pi * freq * np.arange(seed_n) / sample_rate)).astype(np.int16)
    seed = path.with_name(path.name + ".seed.mp3")
    with av.open(str(seed), "w", format="mp3", options={"write_xing": "0", "id3v2_version": "0"}) as dst:
        ost = dst.add_stream("libmp3lame", rate=sample_rate, options={"reservoir": "0"})
        ost.codec_context.layout = "mono"
        ost.codec_context.format = "s16p"
        ost.codec_context.bit_rate = bitrate
        frame = av.AudioFrame.from_ndarray(tone[None, :], format="s16p", layout="mono")
        frame.sample_rate = sample_rate
        dst.mux(ost.encode(frame))
        dst.mux(ost.encode(None))
    frames = split_mp3_frames(seed.read_bytes())
    seed.unlink()
    steady = max(set(frames), key=frames.count)
    first = frames.index(steady)
    last = len(frames) - 1 - frames[::-1].index(steady)
    head, tail = frames[:first], frames[last + 1 :]
    total = math.ceil(seconds * sample_rate / spf)
    middle = total - len(head) - len(tail)
    if frames.count(steady) < 10 or middle < 1:
        raise RuntimeError("could not find a repeatable steady-state MP3 frame")
    path.write_bytes(b"".join(head) + steady * middle + b"".join(tail))
    return path


# ---------------------------------------------------------------------------
# broken / edge-case inputs
# ---------------------------------------------------------------------------

HTML_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Nothing to see here</title></head>
<body><h1>Concert notes</h1>
<p>This page talks about music but contains no audio, video or media links.</p>
<p><a href="/">Home</a></p></body></html>
"""


def make_broken_inputs(
    out_dir: str | os.PathLike,
    source: RenderedPiece | str | os.PathLike | None = None,
    *,
    source_mp3: str | os.PathLike | None = None,
    long_seconds: float = 960.0,
    truncate_fraction: float = 0.4,
) -> dict[str, Path]:
    """Broken and edge-case inputs, written into ``out_dir``.

    ``source``: a RenderedPiece or WAV path used as the musical material (a short
    chorale is rendered if omitted); ``source_mp3``: an existing MP3 of it made
    by :func:`encode` (saves one encode).  Keys -> file names:

    - truncated_mp3 -> truncated.mp3: first 40% of a valid MP3 whose Xing/Info
      header declares the full frame count
    - truncated_wav -> truncated.wav: first 40% of a valid WAV; RIFF/data sizes
      still describe the whole file
    - html -> page.html: an HTML page without any media
    - empty -> empty.mp3: zero bytes
    - random -> random.mp3: 64 KiB of seeded random bytes, with 0xFF bytes
      removed so no MPEG frame sync can occur
    - silent -> silent.wav: 10 s of digital silence, 44.1 kHz stereo
    - mono_8k -> mono8k.wav: the source at 8 kHz mono
    - hires_96k -> hires96k.wav: the source at 96 kHz stereo
    - surround_6ch -> surround6.wav: the source as 6-channel (5.1) 44.1 kHz WAV
    - long -> long.mp3: ``long_seconds`` (16 min) of a quiet 8 kHz mono tone, CBR 8 kb/s,
      no Xing header (duration comes from the bit rate)
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if source is None:
        source = render_chorale(out_dir / "_broken_src", "bach/bwv66.6", tempo_bpm=120, max_seconds=12)
    wav = Path(source.path if isinstance(source, RenderedPiece) else source)
    out: dict[str, Path] = {}

    # An MP3 of the source made by encode(); PyAV's mp3 muxer writes an ID3v2 tag
    # and a Xing/Info frame whose frame count covers the whole file.
    full_mp3 = Path(source_mp3) if source_mp3 else encode(wav, "mp3", out_dir / "_full_for_truncation.mp3")
    data = full_mp3.read_bytes()
    ok, frames = has_xing_header(full_mp3)
    if not ok or not frames:
        raise AssertionError(f"{full_mp3} has no Xing/Info header with a frame count")
    p = out_dir / "truncated.mp3"
    p.write_bytes(data[: int(len(data) * truncate_fraction)])
    if not source_mp3:
        full_mp3.unlink()
    out["truncated_mp3"] = p

    data = wav.read_bytes()
    p = out_dir / "truncated.wav"
    p.write_bytes(data[: int(len(data) * truncate_fraction)])
    out["truncated_wav"] = p

    p = out_dir / "page.html"
    p.write_text(HTML_PAGE, encoding="utf-8")
    out["html"] = p

    p = out_dir / "empty.mp3"
    p.write_bytes(b"")
    out["empty"] = p

    rnd = np.random.default_rng(20240601).integers(0, 255, size=65536, dtype=np.uint8)  # 0..254
    p = out_dir / "random.mp3"
    p.write_bytes(rnd.tobytes())
    out["random"] = p

    out["silent"] = write_wav(out_dir / "silent.wav", np.zeros((10 * SAMPLE_RATE, 2)), SAMPLE_RATE)
    out["mono_8k"] = encode(wav, "wav", out_dir / "mono8k.wav", sample_rate=8000, channels=1)
    out["hires_96k"] = encode(wav, "wav", out_dir / "hires96k.wav", sample_rate=96000)
    out["surround_6ch"] = encode(wav, "wav", out_dir / "surround6.wav", channels=6)
    out["long"] = make_long_mp3(out_dir / "long.mp3", seconds=long_seconds)
    return out


# ---------------------------------------------------------------------------
# loopback HTTP server
# ---------------------------------------------------------------------------

CONTENT_TYPES = {
    ".mp3": "audio/mpeg",
    ".flac": "audio/flac",
    ".ogg": "audio/ogg",
    ".oga": "audio/ogg",
    ".opus": "audio/ogg",
    ".m4a": "audio/mp4",
    ".mp4": "audio/mp4",
    ".aac": "audio/aac",
    ".webm": "audio/webm",
    ".wav": "audio/wav",
    ".mid": "audio/midi",
    ".html": "text/html; charset=utf-8",
    ".htm": "text/html; charset=utf-8",
    ".xml": "application/rss+xml",
    ".rss": "application/rss+xml",
    ".csv": "text/csv; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".json": "application/json",
}


@dataclass
class RequestRecord:
    method: str
    path: str  # as requested, including any /status/..., /flaky/... prefix
    range: str | None
    status: int


def _make_handler(server_obj: MediaServer):
    import email.utils
    import re
    import time
    import urllib.parse
    from http.server import BaseHTTPRequestHandler

    range_re = re.compile(r"bytes=(\d*)-(\d*)")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "RescoredTestMedia/1.0"
        sys_version = ""

        def log_message(self, format, *args):  # quiet
            pass

        def do_HEAD(self):
            self._dispatch(head=True)

        def do_GET(self):
            self._dispatch(head=False)

        # -- helpers -----------------------------------------------------
        def _record(self, status: int):
            with server_obj._lock:
                server_obj.requests.append(RequestRecord(self.command, self.path, self.headers.get("Range"), status))

        def _simple(self, status: int, text: str, head: bool, extra: dict | None = None):
            body = text.encode()
            self._record(status)
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _dispatch(self, head: bool):
            try:
                self._route(head)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        def _route(self, head: bool):
            path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
            parts = [p for p in path.split("/") if p]
            if len(parts) >= 2 and parts[0] == "status" and parts[1].isdigit():
                code = int(parts[1])
                extra = {"Retry-After": "1"} if code in (429, 503) else None
                return self._simple(code, f"status {code}\n", head, extra)
            if len(parts) >= 3 and parts[0] == "flaky" and parts[1].isdigit():
                with server_obj._lock:
                    n = server_obj._flaky_counts.get(path, 0)
                    server_obj._flaky_counts[path] = n + 1
                if n < int(parts[1]):
                    return self._simple(503, "temporarily unavailable\n", head, {"Retry-After": "1"})
                parts = parts[2:]
            elif len(parts) >= 2 and parts[0] == "redirect":
                self._record(302)
                self.send_response(302)
                self.send_header("Location", "/" + "/".join(urllib.parse.quote(p) for p in parts[1:]))
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            elif len(parts) >= 3 and parts[0] == "delay":
                time.sleep(float(parts[1]))
                parts = parts[2:]
            return self._file(parts, head)

        def _file(self, parts: list[str], head: bool):
            root = server_obj.root
            target = root.joinpath(*parts) if parts else root
            try:
                target = target.resolve()
                target.relative_to(root)
            except (ValueError, OSError):
                return self._simple(404, "not found\n", head)
            if not target.is_file():
                return self._simple(404, "not found\n", head)
            size = target.stat().st_size
            ctype = CONTENT_TYPES.get(target.suffix.lower(), "application/octet-stream")
            start, end, status = 0, size - 1, 200
            rng = self.headers.get("Range")
            if rng and size > 0:
                m = range_re.fullmatch(rng.strip())
                if m and (m[1] or m[2]) and not (m[1] and m[2] and int(m[2]) < int(m[1])):
                    if m[1]:
                        start, end = int(m[1]), min(int(m[2]) if m[2] else size - 1, size - 1)
                    else:
                        start, end = max(0, size - int(m[2])), size - 1
                    if start >= size or (not m[1] and int(m[2]) == 0):
                        return self._simple(416, "range not satisfiable\n", head, {"Content-Range": f"bytes */{size}"})
                    status = 206
            length = max(0, end - start + 1)
            self._record(status)
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(length))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Last-Modified", email.utils.formatdate(target.stat().st_mtime, usegmt=True))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.end_headers()
            if head or length == 0:
                return
            with target.open("rb") as f:
                f.seek(start)
                left = length
                while left > 0:
                    chunk = f.read(min(65536, left))
                    if not chunk:
                        break
                    self.wfile.write(chunk)
                    left -= len(chunk)

    return Handler


class MediaServer:
    """Threaded HTTP server on 127.0.0.1 serving a directory, for yt-dlp tests.

    Routes (GET and HEAD):

    - ``/<file>``: the file, with Content-Type by extension, Content-Length,
      Last-Modified, ``Accept-Ranges: bytes`` and single-range ``Range`` support
      (206 + Content-Range; 416 when unsatisfiable).  Missing files -> 404.
    - ``/status/<code>/<anything>``: that status (e.g. 404, 500, 503) with a
      short text body; 503/429 carry ``Retry-After: 1``.
    - ``/flaky/<n>/<file>``: 503 for the first ``n`` requests of that URL, then
      the file (for retry tests; counters persist for the server's life).
    - ``/redirect/<file>``: 302 to ``/<file>``.
    - ``/delay/<seconds>/<file>``: the file after a delay (timeout tests).

    ``requests`` logs every request (method, path, Range header, status).
    """

    def __init__(self, root: str | os.PathLike, host: str = "127.0.0.1", port: int = 0):
        import threading

        self.root = Path(root).resolve()
        self.host, self._port = host, port
        self.requests: list[RequestRecord] = []
        self._lock = threading.Lock()
        self._flaky_counts: dict[str, int] = {}
        self._httpd: Any = None
        self._thread: Any = None

    def start(self) -> MediaServer:
        import threading
        from http.server import ThreadingHTTPServer

        class _Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

            def handle_error(self, request, client_address):  # quiet on client hang-ups
                import sys

                if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
                    super().handle_error(request, client_address)

        self._httpd = _Server((self.host, self._port), _make_handler(self))
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="media-http", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)
            self._httpd = None

    def __enter__(self) -> MediaServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>`` (no trailing slash)."""
        return f"http://{self.host}:{self.port}"

    def url(self, name: str | os.PathLike) -> str:
        """URL of a path relative to the served root (``Path`` or str, may contain '/')."""
        import urllib.parse

        name = Path(name)
        if name.is_absolute():
            name = name.resolve().relative_to(self.root)
        return f"{self.base_url}/{urllib.parse.quote(name.as_posix())}"

    def clear_log(self) -> None:
        with self._lock:
            self.requests.clear()
            self._flaky_counts.clear()


# ---------------------------------------------------------------------------
# podcast RSS
# ---------------------------------------------------------------------------


@dataclass
class FeedItem:
    title: str
    url: str
    mime: str
    length: int  # bytes, for <enclosure length=...>
    duration_s: float  # for <itunes:duration>
    guid: str
    piece: RenderedPiece | None = None  # None for broken entries


def _hms(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def write_rss_feed(
    path: str | os.PathLike,
    items: list[FeedItem],
    *,
    title: str = "Rescored test chorales",
    link: str = "http://127.0.0.1/",
    description: str = "Bach chorales rendered for tests",
) -> Path:
    """RSS 2.0 podcast feed with <enclosure> and <itunes:duration> per item."""
    from xml.sax.saxutils import escape, quoteattr

    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<rss version="2.0" xmlns:itunes="http://www.itunes.com/dtds/podcast-1.0.dtd">',
        "<channel>",
        f"  <title>{escape(title)}</title>",
        f"  <link>{escape(link)}</link>",
        f"  <description>{escape(description)}</description>",
        "  <language>en</language>",
    ]
    for i, it in enumerate(items):
        lines += [
            "  <item>",
            f"    <title>{escape(it.title)}</title>",
            f"    <description>{escape(it.title)}</description>",
            f'    <guid isPermaLink="false">{escape(it.guid)}</guid>',
            f"    <pubDate>Mon, {1 + i:02d} Jan 2024 12:00:00 +0000</pubDate>",
            f'    <enclosure url={quoteattr(it.url)} type={quoteattr(it.mime)} length="{it.length}"/>',
            f"    <itunes:duration>{_hms(it.duration_s)}</itunes:duration>",
            "  </item>",
        ]
    lines += ["</channel>", "</rss>", ""]
    path = Path(path)
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
