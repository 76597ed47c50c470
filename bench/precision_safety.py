"""Is the default (``precision: auto``) separation safe? Stems and notes of the auto path against fp32.

    .venv/bin/python bench/precision_safety.py [--models demucs_unittest,random:htdemucs] [--seconds 20]

Renders mixes with FluidSynth (``tests/media.py``): Bach chorales on piano, strings and organ,
and band mixes (piano + fingered bass + drums). Each mix is separated twice by the same
model, in fp32 and in what ``auto`` resolves to on this machine (bf16 on a CPU with native
bf16), and two things are compared:

- per-stem SNR of the auto stems against the fp32 stems, 10·log10(‖fp32‖² / ‖auto - fp32‖²),
  the minimum over mixes for each stem and overall (the bound: > 35 dB);
- the notes Basic Pitch transcribes from the pitched stems (other, bass, vocals): note F1
  of the auto notes against the fp32 notes (mir_eval, onset within 50 ms, same pitch, offsets
  ignored), pooled over mixes and stems; as a control, the same F1 for the fp32 stems plus
  white noise of the bf16 error's power (how much any perturbation of that size moves
  Basic Pitch's notes); and, to see whether the notes that differ matter, each precision's
  note F1 against the rendered score's own notes (pooled the same way).

No trained Demucs weights can be downloaded here, so neither model separates music:
``demucs_unittest`` is Demucs' own small test model (seeded random weights) whose stems are
filtered copies of the mix, tonal enough for Basic Pitch to find the chorale's notes in;
``random:htdemucs`` is the full-size HTDemucs (the real compute and depth) with random
weights, whose stems are mostly noise, so its notes are spurious detections near Basic
Pitch's thresholds: the most sensitive case, not the typical one. What both measure is
how far bf16 rounding moves the output of the real architectures; how far it moves the
trained model's is unmeasured.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.media import render_band_mix, render_chorale  # noqa: E402

PITCHED = ("other", "bass", "vocals")
MIXES = [  # (kind, corpus, GM program): piano 0, strings 48, church organ 19
    ("chorale", "bach/bwv66.6", 0),
    ("chorale", "bach/bwv26.6", 48),
    ("chorale", "bach/bwv40.8", 19),
    ("band", "bach/bwv244.3", 0),
    ("band", "bach/bwv253", 0),
]


def render(folder: Path, seconds: float):
    pieces = []
    for kind, corpus, program in MIXES:
        name = f"{kind}-{corpus.rsplit('/', 1)[-1]}-{program}"
        if kind == "chorale":
            pieces.append(render_chorale(folder, corpus, tempo_bpm=90, max_seconds=seconds, program=program, name=name))
        else:
            pieces.append(render_band_mix(folder, corpus, tempo_bpm=100, max_seconds=seconds, name=name))
    return pieces


def snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    reference = reference.astype(np.float64)
    noise = np.sum((estimate.astype(np.float64) - reference) ** 2)
    return float("inf") if noise == 0 else float(10 * np.log10(np.sum(reference**2) / noise))


def note_matches(reference, estimate) -> tuple[int, int, int]:
    """(matched, reference notes, estimated notes): onset within 50 ms, same pitch, offsets ignored."""
    import mir_eval

    if not reference or not estimate:
        return 0, len(reference), len(estimate)

    def arrays(notes):
        return (
            np.array([[n.start_s, n.end_s] for n in notes]),
            mir_eval.util.midi_to_hz(np.array([n.pitch for n in notes], dtype=float)),
        )

    ref_i, ref_p = arrays(reference)
    est_i, est_p = arrays(estimate)
    matched = mir_eval.transcription.match_notes(ref_i, ref_p, est_i, est_p, onset_tolerance=0.05, offset_ratio=None)
    return len(matched), len(reference), len(estimate)


def f1_score(matched: int, n_reference: int, n_estimated: int) -> float:
    return 2 * matched / (n_reference + n_estimated) if n_reference + n_estimated else 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="demucs_unittest,random:htdemucs")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each mix")
    args = parser.parse_args()

    from rescored_ray.config import SeparationConfig
    from rescored_ray.decode import decode_audio
    from rescored_ray.precision import resolve_precision
    from rescored_ray.separation import Separator, load_demucs
    from rescored_ray.transcription import Transcriber
    from rescored_ray.types import Audio, Note

    auto = resolve_precision("auto", "cpu")
    transcriber = Transcriber()
    with tempfile.TemporaryDirectory(prefix="rescored_precision_") as tmp:
        pieces = {piece.name: piece for piece in render(Path(tmp), args.seconds)}
        mixes = {name: decode_audio(piece.path) for name, piece in pieces.items()}
    print(
        f"# {len(mixes)} rendered mixes, {sum(a.duration_s for a in mixes.values()):.0f} s of audio; "
        f"auto resolves to {auto} on this CPU; reference fp32"
    )
    for name in args.models.split(","):
        model = load_demucs(name)
        separators = {
            precision: Separator(SeparationConfig(model=name, device="cpu", precision=precision), model=model)
            for precision in ("fp32", "auto")
        }
        worst: dict[str, tuple[float, str]] = {}
        matched = n_ref = n_est = 0
        control = [0, 0, 0]  # the same counts for fp32 stems + white noise of the auto error's power
        rng = np.random.default_rng(0)
        truth = {precision: [0, 0, 0] for precision in separators}  # matched, score notes, transcribed
        for mix_name, audio in mixes.items():
            stems = {precision: separator.separate(audio) for precision, separator in separators.items()}
            for stem, reference in stems["fp32"].items():
                snr = snr_db(reference.samples, stems["auto"][stem].samples)
                if stem not in worst or snr < worst[stem][0]:
                    worst[stem] = (snr, mix_name)
            notes = {
                precision: {
                    stem: transcriber.transcribe(stems[precision][stem], stem)
                    for stem in PITCHED
                    if stem in stems[precision]
                }
                for precision in stems
            }
            for stem, reference_notes in notes["fp32"].items():
                counts = note_matches(reference_notes, notes["auto"][stem])
                matched, n_ref, n_est = matched + counts[0], n_ref + counts[1], n_est + counts[2]
                reference = stems["fp32"][stem].samples
                error_rms = float(np.sqrt(np.mean((stems["auto"][stem].samples - reference) ** 2)))
                noisy = Audio((reference + rng.normal(0, error_rms, reference.shape)).astype(np.float32))
                counts = note_matches(reference_notes, transcriber.transcribe(noisy, stem))
                control = [total + count for total, count in zip(control, counts, strict=True)]
            piece = pieces[mix_name]
            score = [
                Note(float(on), float(off), int(pitch), 64, "score")
                for (on, off), pitch in zip(piece.intervals, piece.pitches, strict=True)
            ]
            for precision, by_stem in notes.items():
                counts = note_matches(score, [note for stem_notes in by_stem.values() for note in stem_notes])
                truth[precision] = [total + count for total, count in zip(truth[precision], counts, strict=True)]
        weights = (
            "Demucs' test model, seeded random weights"
            if name == "demucs_unittest"
            else "full-size HTDemucs, RANDOM weights (noise stems)"
        )
        print(f"\n## {name} ({weights}): auto = {separators['auto'].precision} against fp32")
        print(f"{'stem':<8}{'min SNR dB':>12}  worst mix")
        for stem, (snr, mix_name) in worst.items():
            print(f"{stem:<8}{snr:>12.1f}  {mix_name}")
        overall = min(snr for snr, _ in worst.values())
        print(
            f"minimum SNR over stems and mixes: {overall:.1f} dB "
            f"({'above' if overall > 35 else 'BELOW'} the 35 dB bound)"
        )
        print(
            f"notes from {'/'.join(PITCHED)} stems: {n_ref} from fp32, {n_est} from {separators['auto'].precision}, "
            f"{matched} matched; note F1 of {separators['auto'].precision} against fp32: "
            f"{f1_score(matched, n_ref, n_est):.3f}; control, fp32 + white noise of the same power: "
            f"{f1_score(*control):.3f}"
        )
        print(
            "note F1 against the rendered score: "
            + ", ".join(
                f"{separators[p].precision} {f1_score(*truth[p]):.3f} ({truth[p][2]} notes for {truth[p][1]})"
                for p in separators
            )
        )


if __name__ == "__main__":
    main()
