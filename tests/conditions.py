"""Recording conditions for rendered test media: a reverberant room with noise, vibrato and bends.

:mod:`tests.media` renders scores dry (FluidSynth's own reverb and chorus off), with exact
truth. A user's recording is rarely dry, so this module makes the conditions the
note-quality benchmark (``bench/note_quality.py``) and the transcription-refinement tests
need, keeping the truth exact:

- :func:`in_room`: convolution with a synthetic room impulse response (exponentially
  decaying noise, faster decay at high frequencies, a few early reflections, RT60 about
  1.8 s) plus pink noise at a given SNR. The notes are unchanged; only the sound rings on.
- :func:`add_vibrato`: pitch-bend automation on a monophonic MIDI track: each note gets a
  delayed, slowly growing sinusoidal vibrato around its written pitch, and some notes a
  scoop from below at their start. The written (centre) pitch stays the truth.
- :func:`render_midi`: a MIDI file (e.g. one with pitch bends) rendered the way
  :mod:`tests.media` renders, normalised to -1 dBFS.
- :func:`render_notes`: a short list of ``(onset, offset, pitch)`` on one GM program.

Everything is deterministic (seeded) and needs only numpy, scipy, pretty_midi and the
``fluidsynth`` binary with a General MIDI soundfont.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tests import media

__all__ = [
    "GUITAR",
    "PIANO",
    "STRINGS",
    "VIOLIN",
    "VOICE",
    "RoomSpec",
    "VibratoSpec",
    "add_vibrato",
    "in_room",
    "pink_noise",
    "render_midi",
    "render_notes",
    "room_impulse_response",
]

PIANO = 0  # GM programs, 0-based
GUITAR = 25  # Acoustic Guitar (steel)
VIOLIN = 40
STRINGS = 48  # String Ensemble 1
VOICE = 53  # Voice Oohs
BEND_RANGE_SEMITONES = 2.0  # the GM default; FluidSynth honours it without an RPN


@dataclass(frozen=True)
class RoomSpec:
    """A large reverberant room: reverberation time, how much reverb against the direct
    sound (direct-to-reverberant ratio, dB), and noise (SNR against the music, dB)."""

    rt60_s: float = 1.8
    drr_db: float = -3.0
    snr_db: float = 30.0
    predelay_s: float = 0.012
    seed: int = 7


@dataclass(frozen=True)
class VibratoSpec:
    """Vibrato and bends on a melodic line. Depth is the half extent (cents either side of
    the note); rate in Hz; it starts ``delay_s`` into a note and grows over ``ramp_s``.
    Every ``scoop_every``-th note starts ``scoop_cents`` flat and slides up in ``scoop_s``."""

    rate_hz: float = 5.5
    depth_cents: float = 70.0
    delay_s: float = 0.12
    ramp_s: float = 0.25
    scoop_every: int = 3
    scoop_cents: float = 100.0
    scoop_s: float = 0.1
    jitter: float = 0.15  # relative spread of rate and depth from note to note
    step_s: float = 0.01  # pitch-bend event spacing
    seed: int = 11


# ---------------------------------------------------------------------------
# the room
# ---------------------------------------------------------------------------


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Pink (1/f power) noise of ``n`` samples, unit RMS."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(spectrum.shape[0], dtype=float)
    f[0] = 1.0
    pink = np.fft.irfft(spectrum / np.sqrt(f), n)
    return pink / (np.sqrt(np.mean(pink**2)) + 1e-12)


def room_impulse_response(rate: int, spec: RoomSpec = RoomSpec(), channels: int = 2) -> np.ndarray:
    """A synthetic room impulse response, (samples, channels): a direct impulse, six early
    reflections in the first 40 ms, then decorrelated noise decaying by 60 dB in ``rt60_s``
    below 1 kHz, faster above (air and wall absorption: RT60 x 0.7 in 1-4 kHz, x 0.45 above),
    scaled to ``drr_db``."""
    from scipy import signal

    rng = np.random.default_rng(spec.seed)
    n = round((spec.rt60_s * 1.2 + spec.predelay_s) * rate)
    t = np.arange(n) / rate
    bands = [(None, 1000.0, 1.0), (1000.0, 4000.0, 0.7), (4000.0, None, 0.45)]
    out = np.zeros((n, channels))
    start = round(spec.predelay_s * rate)
    for ch in range(channels):
        tail = np.zeros(n)
        for lo, hi, scale in bands:
            noise = rng.standard_normal(n)
            if lo is None:
                sos = signal.butter(4, hi, btype="lowpass", fs=rate, output="sos")
            elif hi is None:
                sos = signal.butter(4, lo, btype="highpass", fs=rate, output="sos")
            else:
                sos = signal.butter(4, [lo, hi], btype="bandpass", fs=rate, output="sos")
            band = signal.sosfilt(sos, noise)
            tail += band * np.exp(-6.91 * t / (spec.rt60_s * scale))
        tail[:start] = 0.0
        onset = np.clip((t - spec.predelay_s) / 0.01, 0.0, 1.0)  # the diffuse field builds up over 10 ms
        tail *= onset
        reverb_energy = float(np.sum(tail**2))
        tail *= np.sqrt(10 ** (-spec.drr_db / 10) / reverb_energy)  # direct impulse has energy 1
        out[:, ch] = tail
        out[0, ch] += 1.0
        for _k in range(6):  # early reflections
            delay = round(rate * rng.uniform(0.004, 0.04))
            out[delay, ch] += rng.uniform(0.2, 0.5) * rng.choice((-1.0, 1.0))
    return out


def in_room(x: np.ndarray, rate: int, spec: RoomSpec = RoomSpec()) -> np.ndarray:
    """``x`` (frames, channels) played in the room of ``spec`` with noise; same length plus the
    reverb tail (RT60 / 2 more), peak-normalised to -1 dBFS."""
    from scipy import signal

    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    ir = room_impulse_response(rate, spec, channels=x.shape[1])
    n_out = x.shape[0] + int(spec.rt60_s / 2 * rate)
    wet = np.stack([signal.fftconvolve(x[:, ch], ir[:, ch])[:n_out] for ch in range(x.shape[1])], axis=1)
    if wet.shape[0] < n_out:
        wet = np.pad(wet, ((0, n_out - wet.shape[0]), (0, 0)))
    rng = np.random.default_rng(spec.seed + 1)
    active = wet[np.abs(wet).max(axis=1) > 1e-3 * np.abs(wet).max()]
    level = float(np.sqrt(np.mean(active**2)))
    noise = np.stack([pink_noise(n_out, rng) for _ in range(x.shape[1])], axis=1)
    wet += noise * level * 10 ** (-spec.snr_db / 20)
    fade = min(int(0.05 * rate), n_out)
    wet[n_out - fade :] *= np.linspace(1.0, 0.0, fade)[:, None]
    return wet * (10 ** (-1 / 20) / float(np.abs(wet).max()))


# ---------------------------------------------------------------------------
# vibrato and bends
# ---------------------------------------------------------------------------


def _bend_value(cents: float) -> int:
    return int(np.clip(round(cents / (BEND_RANGE_SEMITONES * 100) * 8192), -8192, 8191))


def add_vibrato(pm, spec: VibratoSpec = VibratoSpec(), instruments: list[int] | None = None) -> int:
    """Add vibrato (and scoops) as pitch bends to the monophonic instruments of ``pm`` (a
    ``pretty_midi.PrettyMIDI``, changed in place), ``instruments`` by index (default: all
    that are not drums). Each note's bends start at its onset and reset to 0 at its end.
    Returns the number of notes given vibrato."""
    import pretty_midi

    rng = np.random.default_rng(spec.seed)
    count = 0
    for index, inst in enumerate(pm.instruments):
        if inst.is_drum or (instruments is not None and index not in instruments):
            continue
        notes = sorted(inst.notes, key=lambda n: n.start)
        bends: list[pretty_midi.PitchBend] = []
        for k, note in enumerate(notes):
            end = notes[k + 1].start if k + 1 < len(notes) else note.end
            end = min(end, note.end)
            rate = spec.rate_hz * (1 + spec.jitter * rng.uniform(-1, 1))
            depth = spec.depth_cents * (1 + spec.jitter * rng.uniform(-1, 1))
            phase = rng.uniform(0, 2 * np.pi)
            scoop = spec.scoop_every > 0 and k % spec.scoop_every == spec.scoop_every - 1
            times = np.arange(note.start, end, spec.step_s)
            for t in times:
                age = t - note.start
                cents = 0.0
                if age > spec.delay_s:
                    grow = min(1.0, (age - spec.delay_s) / spec.ramp_s)
                    cents += depth * grow * np.sin(2 * np.pi * rate * (age - spec.delay_s) + phase)
                if scoop and age < spec.scoop_s:
                    cents -= spec.scoop_cents * (1 - age / spec.scoop_s)
                bends.append(pretty_midi.PitchBend(_bend_value(cents), float(t)))
            bends.append(pretty_midi.PitchBend(0, float(end)))
            count += 1
        inst.pitch_bends = sorted(bends, key=lambda b: b.time)
    return count


# ---------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------


def render_midi(midi_path: str | Path, wav_path: str | Path, *, end_s: float | None = None, gain: float = 0.8) -> Path:
    """Render ``midi_path`` with FluidSynth as :mod:`tests.media` does (reverb and chorus
    off, 44.1 kHz stereo), cut at ``end_s`` (default: the whole render), faded over the last
    50 ms and normalised to -1 dBFS; written as 16-bit PCM."""
    wav_path = Path(wav_path)
    raw = wav_path.with_name(f".{wav_path.stem}.fluidsynth.wav")
    cmd = [
        media.find_fluidsynth(),
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
        str(media.SAMPLE_RATE),
        "-T",
        "wav",
        "-O",
        "float",
        "-F",
        str(raw),
        str(media.find_soundfont()),
        str(midi_path),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if res.returncode != 0 or not raw.exists():
        raise RuntimeError(f"fluidsynth failed ({res.returncode}): {res.stderr[-2000:]}")
    x, rate = media.read_wav(raw)
    raw.unlink()
    x = x.astype(np.float64)
    if end_s is not None:
        x = x[: round(end_s * rate)]
    fade = min(int(0.05 * rate), x.shape[0])
    x[x.shape[0] - fade :] *= np.linspace(1.0, 0.0, fade)[:, None]
    x *= 10 ** (-1 / 20) / max(float(np.abs(x).max()), 1e-9)
    return media.write_wav(wav_path, x, rate)


def render_notes(
    out_dir: str | Path,
    name: str,
    notes: list[tuple[float, float, int]],
    *,
    program: int = PIANO,
    velocity: int = 90,
    tail_s: float = 0.8,
    vibrato: VibratoSpec | None = None,
    room: RoomSpec | None = None,
) -> tuple[Path, np.ndarray, np.ndarray]:
    """A few notes ``(onset_s, offset_s, pitch)`` on one GM program, optionally with vibrato
    (pitch bends) and in a room. Returns the WAV and the truth (intervals, pitches)."""
    import pretty_midi

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pm = pretty_midi.PrettyMIDI(resolution=960, initial_tempo=120.0)
    inst = pretty_midi.Instrument(program=program, name=name)
    inst.notes = [pretty_midi.Note(velocity, int(p), float(a), float(b)) for a, b, p in notes]
    pm.instruments.append(inst)
    if vibrato is not None:
        add_vibrato(pm, vibrato)
    end_s = max(b for _, b, _ in notes) + tail_s
    inst.control_changes.append(pretty_midi.ControlChange(64, 0, end_s))  # keeps the render running
    midi = out_dir / f"{name}.mid"
    pm.write(str(midi))
    wav = render_midi(midi, out_dir / f"{name}.wav", end_s=end_s)
    if room is not None:
        x, rate = media.read_wav(wav)
        media.write_wav(wav, in_room(x, rate, room), rate)
    intervals = np.array([[a, b] for a, b, _ in notes], dtype=float).reshape(-1, 2)
    return wav, intervals, np.array([p for _, _, p in notes], dtype=int)
