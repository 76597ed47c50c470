"""Note refinement after Basic Pitch's decoder: attacks where they are, one note per note.

Basic Pitch's decoder (``note_creation.output_to_notes_polyphonic``) reads notes off the
model's activations with fixed thresholds. On real-sounding audio that goes wrong in four
ways, each measured by ``bench/note_quality.py`` (issue 18), and each mended here with the
model's activations and the stem's own audio as the evidence:

1. **Late onsets.** A slow attack (bowed strings, a voice, a piano in a reverberant room)
   gives several onset peaks; the decoder walks onsets backwards in time, so the later
   peak takes the note and the first, true one is dropped as too short. Each note's start
   moves back to the first strong onset peak of its pitch within :attr:`~rescored_ray.config.RefineConfig.onset_search_ms`
   (never into the previous note of that pitch), and the onset time is placed where that
   peak's activation rises (:func:`move_onsets`).
2. **Tails and ringing.** A pitch re-detected while its previous note decays (reverb,
   sustain, ringing strings, a bowed note's own modulation) is merged into that note, or
   dropped after a gap, unless there is evidence of a new attack: a strong onset
   activation, or an onset activation together with a rise of the audio's energy at the
   pitch's fundamental (:func:`resolve_continuations`). A repeated note (a new transient)
   shows both and stays.
3. **Harmonics and ghosts.** A note an octave or a twelfth above, or an octave below, a
   louder note sounding at the same time, with no attack of its own, is dropped
   (:func:`drop_ghosts`).
4. **Vibrato and bends.** Fragments of a note at neighbouring semitones (a vibrato wider
   than a quarter tone, a scoop into the note) with no attack between them are joined into
   one note at the centre of the pitch contour (:func:`join_vibrato`).

Everything works in model frames (``FRAMES_PER_SECOND``, about 86 a second) on plain numpy
arrays: no model, no Ray, no torch. :func:`refine` runs the steps in order; each is a
function of its own, tested on its own (tests/unit/test_refine.py) and measured in the
benchmark.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from rescored_ray.config import RefineConfig

__all__ = [
    "Evidence",
    "NoteEvent",
    "drop_ghosts",
    "join_vibrato",
    "move_onsets",
    "pitch_energy",
    "refine",
    "resolve_continuations",
    "to_seconds",
]

SAMPLE_RATE = 22050
"""The model's audio rate; :class:`Evidence` takes audio at this rate."""
HOP = 256
FRAMES_PER_SECOND = SAMPLE_RATE / HOP
LOWEST_PITCH = 21
N_PITCHES = 88
CONTOUR_BINS_PER_SEMITONE = 3
CONTOUR_OFFSET = 0.15
"""The contour's centre of mass lies this many semitones above the written pitch on steady
tones (measured on piano, voice, choir and violin renders: +0.13..+0.20); subtracted."""
SILENT_DB = -100.0
_BANDS = ((4096, 21, 48), (2048, 48, 72), (1024, 72, 109))
"""FFT size per pitch range (MIDI, half-open): long windows resolve low semitones."""
VOICED = 0.3
"""Contour activation above which a pitch is taken to be sounding."""
VIBRATO_ONSET = 0.8
"""Within a run of vibrato, a re-detection of the note's own pitch is a new note only with an
onset activation this strong (vibrato itself fires the onset output up to about 0.7)."""


def _frames(ms: float) -> int:
    return round(ms / 1000.0 * FRAMES_PER_SECOND)


@dataclass(frozen=True)
class NoteEvent:
    """A note in model frames: ``start`` may be fractional (a refined onset), ``end`` is exclusive."""

    start: float
    end: float
    pitch: int
    amplitude: float

    @property
    def bin(self) -> int:
        return self.pitch - LOWEST_PITCH


class Evidence:
    """What refinement looks at for one recording or stem: the model's activations (frames x
    88 pitches for ``note`` and ``onset``, frames x 264 third-semitone bins for ``contour``)
    and the audio's energy at each pitch's fundamental in dB (:meth:`energy`), computed for
    the frames refinement asks about, when it asks.

    ``audio`` is the model's mono 22.05 kHz input; ``times`` (seconds of each frame, Basic
    Pitch's ``model_frames_to_time``) places the energy frames on the activations' clock.
    """

    def __init__(
        self, note: np.ndarray, onset: np.ndarray, contour: np.ndarray, audio: np.ndarray, times: np.ndarray
    ) -> None:
        self.note = np.asarray(note, dtype=np.float32)
        self.onset = np.asarray(onset, dtype=np.float32)
        self.contour = np.asarray(contour, dtype=np.float32)
        self.audio = np.asarray(audio, dtype=np.float32)
        self.centres = np.round(np.asarray(times, dtype=float) * SAMPLE_RATE).astype(np.int64)
        self._energy = np.full((self.n_frames, N_PITCHES), SILENT_DB, dtype=np.float32)
        self._done = np.zeros((len(_BANDS), self.n_frames), dtype=bool)

    @property
    def n_frames(self) -> int:
        return int(self.note.shape[0])

    @classmethod
    def from_output(cls, output: Mapping[str, np.ndarray], audio: np.ndarray, times: np.ndarray) -> Evidence:
        """From the model's ``note``/``onset``/``contour`` output."""
        return cls(output["note"], output["onset"], output["contour"], audio, times)

    def energy(self, b: int, start: int, stop: int) -> np.ndarray:
        """Energy (dB) at pitch bin ``b``'s fundamental in frames ``start`` to ``stop``."""
        start, stop = max(0, start), max(0, min(self.n_frames, stop))
        band = next(k for k, (_, lo, hi) in enumerate(_BANDS) if lo <= b + LOWEST_PITCH < hi)
        missing = start + np.flatnonzero(~self._done[band, start:stop])
        if missing.size and self.audio.size:
            n_fft, lo, hi = _BANDS[band]
            self._energy[missing, lo - LOWEST_PITCH : hi - LOWEST_PITCH] = _band_energy(
                self.audio, self.centres[missing], n_fft, lo, hi
            )
        self._done[band, missing] = True
        out: np.ndarray = self._energy[start:stop, b]
        return out

    def energy_map(self) -> np.ndarray:
        """The energy of every pitch in every frame (frames x 88, dB)."""
        for _, lo, _ in _BANDS:
            self.energy(lo - LOWEST_PITCH, 0, self.n_frames)
        return self._energy


# ---------------------------------------------------------------------------- audio evidence


def _band_weights(n_fft: int, pitches: np.ndarray) -> np.ndarray:
    """Triangular weights, half a semitone either side of each pitch's fundamental."""
    freqs = np.arange(n_fft // 2 + 1) * SAMPLE_RATE / n_fft
    midi = 69 + 12 * np.log2(np.maximum(freqs, 1e-3) / 440.0)
    weights = np.clip(1.0 - np.abs(midi[None, :] - pitches[:, None].astype(float)) / 0.5, 0.0, None)
    empty = weights.sum(axis=1) == 0
    if empty.any():  # a band narrower than one FFT bin: take the nearest bin
        weights[empty, np.argmin(np.abs(midi[None, :] - pitches[empty, None]), axis=1)] = 1.0
    out: np.ndarray = weights.astype(np.float32)
    return out


def _band_energy(audio: np.ndarray, centres: np.ndarray, n_fft: int, lo: int, hi: int) -> np.ndarray:
    """dB energy of pitches ``lo``..``hi`` - 1 in ``n_fft``-sample frames centred on ``centres``."""
    from scipy import fft  # single precision, about twice numpy's speed here

    weights = _band_weights(n_fft, np.arange(lo, hi)).T
    window = np.hanning(n_fft).astype(np.float32)
    padded = np.concatenate([np.zeros(n_fft, np.float32), audio, np.zeros(n_fft, np.float32)])
    offsets = np.arange(n_fft) + n_fft // 2
    out = np.empty((len(centres), hi - lo), dtype=np.float32)
    for first in range(0, len(centres), 1024):
        starts = np.clip(centres[first : first + 1024], -n_fft // 2, audio.size + n_fft // 2)
        frames = padded[starts[:, None] + offsets[None, :]] * window
        power = np.abs(fft.rfft(frames, axis=1)) ** 2
        out[first : first + 1024] = 10 * np.log10(power @ weights + 1e-10)
    return out


def pitch_energy(audio: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Energy (dB) at each of the 88 piano pitches' fundamentals, one row per model frame.

    Short-time spectra centred on ``times`` (seconds) of ``audio`` (mono, 22.05 kHz), with
    4096-, 2048- and 1024-sample windows below C3, C3-C5 and above, summed over half a
    semitone either side of each fundamental.
    """
    audio = np.asarray(audio, dtype=np.float32)
    centres = np.round(np.asarray(times, dtype=float) * SAMPLE_RATE).astype(np.int64)
    out = np.full((len(centres), N_PITCHES), SILENT_DB, dtype=np.float32)
    if len(centres) and audio.size:
        for n_fft, lo, hi in _BANDS:
            out[:, lo - LOWEST_PITCH : hi - LOWEST_PITCH] = _band_energy(audio, centres, n_fft, lo, hi)
    return out


# ---------------------------------------------------------------------------- helpers


def _window(values: np.ndarray, start: int, stop: int) -> np.ndarray:
    return values[max(0, start) : max(0, min(len(values), stop))]


def onset_peak(ev: Evidence, b: int, frame: int) -> float:
    """The strongest onset activation of pitch bin ``b`` within two frames of ``frame``."""
    w = _window(ev.onset[:, b], frame - 2, frame + 3)
    return float(w.max()) if w.size else 0.0


def energy_rise(ev: Evidence, b: int, frame: int, span: int = 6) -> float:
    """How far (dB) the energy at pitch bin ``b``'s fundamental climbs from its lowest in the
    ``span`` frames up to ``frame`` to its highest in the ``span`` frames from it."""
    before = ev.energy(b, frame - span, frame + 1)
    after = ev.energy(b, frame, frame + span)
    if not before.size or not after.size:
        return 0.0
    return float(after.max() - before.min())


def is_attack(ev: Evidence, b: int, frame: int, s: RefineConfig) -> bool:
    """Evidence of a new attack of pitch bin ``b`` at ``frame``: a strong onset activation, or
    a weaker one with the energy at the pitch's fundamental rising."""
    peak = onset_peak(ev, b, frame)
    if peak >= s.attack_onset:
        return True
    return peak >= s.attack_onset_low and energy_rise(ev, b, frame) >= s.attack_rise_db


def _by_pitch(events: Sequence[NoteEvent]) -> dict[int, list[NoteEvent]]:
    out: dict[int, list[NoteEvent]] = {}
    for e in sorted(events, key=lambda e: (e.pitch, e.start)):
        out.setdefault(e.pitch, []).append(e)
    return out


def _sorted(events: list[NoteEvent]) -> list[NoteEvent]:
    return sorted(events, key=lambda e: (e.start, e.pitch))


# ---------------------------------------------------------------------------- 1. onsets


def _rise_point(curve: np.ndarray, peak: int, fraction: float, limit: int) -> float:
    """The fractional frame before ``peak`` where ``curve`` first reaches ``fraction`` of its
    value at the peak (looking back at most ``limit`` frames), linearly interpolated."""
    level = fraction * float(curve[peak])
    f = peak
    while f > 0 and peak - f < limit and curve[f - 1] >= level:
        f -= 1
    if f == 0 or peak - f >= limit:
        return float(f)
    low, high = float(curve[f - 1]), float(curve[f])
    return f - 1 + (level - low) / (high - low) if high > low else float(f)


def move_onsets(events: Sequence[NoteEvent], ev: Evidence, s: RefineConfig) -> list[NoteEvent]:
    """Each note's start moves to its attack.

    The attack is the earliest onset peak of the note's pitch within
    :attr:`~rescored_ray.config.RefineConfig.onset_search_ms` before its start (never before the previous note of
    the pitch ends) that reaches :attr:`~rescored_ray.config.RefineConfig.onset_peak` and at least
    :attr:`~rescored_ray.config.RefineConfig.onset_earlier` times the note's own onset peak; else the note's own peak
    (within two frames of its start). The onset time is where that peak's activation first
    reaches :attr:`~rescored_ray.config.RefineConfig.onset_rise` of it.
    """
    search = _frames(s.onset_search_ms)
    out: list[NoteEvent] = []
    for notes in _by_pitch(events).values():
        previous_end = 0.0
        for e in notes:
            curve = ev.onset[:, e.bin]
            start = int(e.start)
            near = _window(curve, start - 2, start + 3)
            own = max(0, start - 2) + int(np.argmax(near)) if near.size else start
            needed = max(s.onset_peak, s.onset_earlier * float(curve[min(own, len(curve) - 1)]))
            peak = own
            for f in range(max(int(np.ceil(previous_end)), start - search, 1), min(own, ev.n_frames - 1)):
                if curve[f] >= needed and curve[f] >= curve[f - 1] and curve[f] >= curve[f + 1]:
                    while f + 1 < own and curve[f + 1] >= curve[f]:  # a plateau: its last frame
                        f += 1
                    peak = f
                    break
            onset = _rise_point(curve, peak, s.onset_rise, limit=4) if peak < len(curve) else float(start)
            new_start = min(max(previous_end, onset), e.end - 1)
            out.append(replace(e, start=new_start))
            previous_end = e.end
    return _sorted(out)


# ---------------------------------------------------------------------------- 2. continuations


def resolve_continuations(events: Sequence[NoteEvent], ev: Evidence, s: RefineConfig) -> list[NoteEvent]:
    """A note that follows its pitch's previous note without an attack is that note's tail.

    Touching it (starting within :attr:`~rescored_ray.config.RefineConfig.merge_gap_ms` of its end), it must show a
    strong attack (:func:`is_attack`) or it is merged into the previous note. After a gap of
    up to :attr:`~rescored_ray.config.RefineConfig.tail_s`, a weaker sign suffices (an onset activation of
    :attr:`~rescored_ray.config.RefineConfig.attack_onset_low` or an energy rise of :attr:`~rescored_ray.config.RefineConfig.attack_rise_db`:
    the decoder already saw the sound fall); without either it is dropped.
    """
    merge_gap = _frames(s.merge_gap_ms)
    tail = s.tail_s * FRAMES_PER_SECOND
    out: list[NoteEvent] = []
    for notes in _by_pitch(events).values():
        kept: list[NoteEvent] = []
        for e in notes:
            if not kept or e.start - kept[-1].end > tail:
                kept.append(e)
                continue
            frame = round(e.start)
            if e.start - kept[-1].end <= merge_gap:
                if is_attack(ev, e.bin, frame, s):
                    kept.append(e)
                else:
                    last = kept[-1]
                    kept[-1] = replace(last, end=max(last.end, e.end), amplitude=max(last.amplitude, e.amplitude))
            elif (
                onset_peak(ev, e.bin, frame) >= s.attack_onset_low or energy_rise(ev, e.bin, frame) >= s.attack_rise_db
            ):
                kept.append(e)
        out.extend(kept)
    return _sorted(out)


# ---------------------------------------------------------------------------- 3. ghosts


def drop_ghosts(events: Sequence[NoteEvent], ev: Evidence, s: RefineConfig) -> list[NoteEvent]:
    """Drop a note an octave or a twelfth above a note sounding at its start (its 2nd or 3rd
    harmonic) whose level (the model's mean frame activation) is under
    :attr:`~rescored_ray.config.RefineConfig.harmonic_ratio` of that note's, or an octave
    below one under :attr:`~rescored_ray.config.RefineConfig.subharmonic_ratio` of it, unless
    its own onset activation reaches :attr:`~rescored_ray.config.RefineConfig.ghost_onset` (an
    attack of its own). Quieter notes are judged first, so a ghost never vouches for another."""
    events = list(events)
    by_pitch: dict[int, list[int]] = {}
    for i, e in enumerate(events):
        by_pitch.setdefault(e.pitch, []).append(i)
    dropped: set[int] = set()
    for i in sorted(range(len(events)), key=lambda i: events[i].amplitude):
        e = events[i]
        if onset_peak(ev, e.bin, round(e.start)) >= s.ghost_onset:
            continue
        for interval, ratio in ((12, s.harmonic_ratio), (19, s.harmonic_ratio), (-12, s.subharmonic_ratio)):
            parents = by_pitch.get(e.pitch - interval, ())
            if any(
                j not in dropped
                and events[j].start <= e.start + 2 < events[j].end
                and e.amplitude < ratio * events[j].amplitude
                for j in parents
            ):
                dropped.add(i)
                break
    return [e for i, e in enumerate(events) if i not in dropped]


# ---------------------------------------------------------------------------- 4. vibrato


def _sounding(ev: Evidence, pitch: int, start: float, stop: float) -> bool:
    """Whether the contour keeps a voice within two semitones of ``pitch`` all through the
    frames from ``start`` to ``stop`` (a gap between fragments that is not a silence)."""
    a, b = int(np.floor(start)), int(np.ceil(stop))
    if b <= a:
        return True
    centre = (pitch - LOWEST_PITCH) * CONTOUR_BINS_PER_SEMITONE
    band = ev.contour[a:b, max(0, centre - 6) : centre + 7]
    return bool(band.size) and bool(np.all(band.max(axis=1) >= VOICED))


def _groups(events: list[NoteEvent], ev: Evidence, s: RefineConfig) -> list[list[NoteEvent]]:
    """Runs of notes that could be one note with vibrato, each starting a semitone or less from
    the run's first note within half a vibrato window of the run's end (a whole window while the
    contour shows the voice sounding on). A neighbour joins when
    the voice sounds on between it and the run (the contour) or it shows no strong attack; a
    re-detection of the first note's own pitch joins only when the voice sounds on and its
    onset activation stays under :data:`VIBRATO_ONSET`. Every note is in one run."""
    ordered = _sorted(events)
    gap = _frames(s.vibrato_window_ms) / 2
    taken = [False] * len(ordered)
    groups: list[list[NoteEvent]] = []
    for i, first in enumerate(ordered):
        if taken[i]:
            continue
        taken[i] = True
        group = [first]
        end = first.end
        for j in range(i + 1, len(ordered)):
            cand = ordered[j]
            if cand.start > end + 2 * gap:
                break
            if taken[j] or abs(cand.pitch - first.pitch) > 1 or cand.start < first.start + 1:
                continue
            # (An energy rise is no evidence here: vibrato moves energy between neighbours.)
            sounding = _sounding(ev, first.pitch, end, cand.start)
            if cand.start > end + gap and not sounding:
                continue
            peak = onset_peak(ev, cand.bin, round(cand.start))
            if cand.pitch == first.pitch:
                if not (sounding and peak < VIBRATO_ONSET):
                    continue
            elif not (sounding or peak < s.attack_onset):
                continue
            taken[j] = True
            group.append(cand)
            end = max(end, cand.end)
        groups.append(group)
    return groups


def _contour_track(group: list[NoteEvent], ev: Evidence) -> np.ndarray:
    """Frame-wise fractional MIDI pitch over a run, read from the contour within 2.5 semitones
    of the run's first note (its gaps included)."""
    first = int(group[0].start)
    last = min(ev.n_frames, int(np.ceil(max(e.end for e in group))))
    centre = (group[0].pitch - LOWEST_PITCH) * CONTOUR_BINS_PER_SEMITONE
    lo, hi = max(0, centre - 7), min(ev.contour.shape[1], centre + 8)
    block = np.maximum(ev.contour[first:last, lo:hi].astype(float) - 0.1, 0.0)
    weight = block.sum(axis=1)
    bins = block @ np.arange(lo, hi, dtype=float)
    track = np.where(weight > 0, bins / np.where(weight > 0, weight, 1.0), float(centre))
    return np.asarray(track / CONTOUR_BINS_PER_SEMITONE + LOWEST_PITCH - CONTOUR_OFFSET, dtype=float)


def _segments(level: np.ndarray, min_len: int) -> list[tuple[int, int]]:
    """Stretches of equal ``level``; a stretch shorter than ``min_len`` joins the neighbour
    whose level is closer (the earlier one on a tie)."""
    cuts = [0, *[k for k in range(1, len(level)) if level[k] != level[k - 1]], len(level)]
    spans = [[a, b] for a, b in itertools.pairwise(cuts)]
    while len(spans) > 1:
        short = min(range(len(spans)), key=lambda k: spans[k][1] - spans[k][0])
        a, b = spans[short]
        if b - a >= min_len:
            break
        here = level[a]
        left = abs(int(level[spans[short - 1][0]]) - int(here)) if short > 0 else 99
        right = abs(int(level[spans[short + 1][0]]) - int(here)) if short + 1 < len(spans) else 99
        if left <= right:
            spans[short - 1][1] = b
        else:
            spans[short + 1][0] = a
        del spans[short]
        merged: list[list[int]] = []
        for span in spans:  # neighbours that now have the same level become one
            if merged and level[merged[-1][0]] == level[span[0]]:
                merged[-1][1] = span[1]
            else:
                merged.append(span)
        spans = merged
    return [(a, b) for a, b in spans]


def join_vibrato(events: Sequence[NoteEvent], ev: Evidence, s: RefineConfig) -> list[NoteEvent]:
    """Join runs of notes a semitone apart with no attacks between them (:func:`_groups`: a
    vibrato or a scoop split into neighbours) into notes at the pitch the contour centres on.

    A run's contour pitch, averaged over :attr:`~rescored_ray.config.RefineConfig.vibrato_window_ms` (about one vibrato
    cycle), is cut where its rounded value changes for at least half a window (a real step of
    a legato line). Each part becomes one note at the median of its contour pitch; a part
    after a step starts at the run's note that starts nearest the step.
    """
    out: list[NoteEvent] = []
    width = max(1, _frames(s.vibrato_window_ms))
    for group in _groups(list(events), ev, s):
        if len({e.pitch for e in group}) == 1:  # repeated notes are for the attack test to judge
            out.extend(group)
            continue
        first = int(group[0].start)
        track = _contour_track(group, ev)
        padded = np.pad(track, (width // 2, width - 1 - width // 2), mode="edge")
        smooth = np.convolve(padded, np.ones(width) / width, mode="valid")
        spans = _segments(np.round(smooth).astype(int), max(1, width // 2))
        amplitude = max(e.amplitude for e in group)
        end = max(e.end for e in group)
        starts = [group[0].start]
        for a, _ in spans[1:]:
            nearest = min(group, key=lambda e: abs(e.start - (first + a)))
            starts.append(nearest.start if abs(nearest.start - (first + a)) <= width / 2 else float(first + a))
        for (a, b), start, stop in zip(spans, starts, [*starts[1:], end], strict=True):
            if stop - start >= 1:
                pitch = int(np.round(np.median(track[a:b])))
                out.append(NoteEvent(start=start, end=stop, pitch=pitch, amplitude=amplitude))
    return _sorted(out)


# ---------------------------------------------------------------------------- all of it


def refine(events: Sequence[NoteEvent], ev: Evidence, s: RefineConfig | None = None) -> list[NoteEvent]:
    """Onsets, vibrato, continuations, ghosts, in that order (each as ``s`` switches it)."""
    s = s or RefineConfig()
    out = list(events)
    if s.onsets:
        out = move_onsets(out, ev, s)
    if s.vibrato:
        out = join_vibrato(out, ev, s)
    if s.continuations:
        out = resolve_continuations(out, ev, s)
    if s.ghosts:
        out = drop_ghosts(out, ev, s)
    return _sorted(out)


def to_seconds(frames: tuple[float, float], times: np.ndarray) -> tuple[float, float]:
    """Fractional model frames on the clock of ``times`` (seconds of each whole frame)."""
    index = np.arange(len(times), dtype=float)
    start, end = np.interp(frames, index, times)
    return float(start), float(end)
