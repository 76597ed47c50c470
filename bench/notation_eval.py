"""Score-quality metrics of ../shared/notation-metrics.md, for one MusicXML score against a rendered truth.

Every score, ours, the baseline's and the truth itself, goes through the same route: MusicXML
-> MuseScore 3 MIDI (``mscore3 -o x.mid``) for playback accuracy and MV2H, and the MusicXML
text for readability. Times are put on the audio's clock: a score's tick 0 is at
``offset_s`` seconds of the recording (``result.json``'s ``time_offset_s`` for ours, the
render's lead-in for the truth, 0 for the baseline).

Two details beyond the metrics file, both applied to every score alike:
- the MIDI MuseScore plays is merged per pitch before scoring (a unison written in two
  voices sounds once, as the rendered truth does);
- MV2H texts are shifted onto the audio clock, so truth and transcription share a time
  origin before MV2H's own alignment (-a). Pickups need no ``-a N`` for the Converter:
  MuseScore writes an irregular first bar as a time-signature change (a 1/4 bar, then 3/4),
  which the Converter turns into its own meter hierarchy.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
import warnings
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

MUSESCORE = os.environ.get("MSCORE", "mscore3")
MV2H_SRC = Path(os.environ.get("MV2H_SRC", Path(__file__).resolve().parents[2] / "shared" / "tools" / "mv2h"))
ONSET_TOLERANCE_S = 0.05
OFFSET_RATIO = 0.2
SHORT_TYPES = frozenset({"16th", "32nd", "64th", "128th", "256th", "512th", "1024th"})
PLACEHOLDER_TITLES = frozenset({"", "transcription", "untitled", "title", "music21", "music21 fragment", "score"})
PLACEHOLDER_COMPOSERS = frozenset({"music21", "composer", "unknown", "anonymous composer"})
MV2H_KEYS = ("multi_pitch", "voice", "meter", "value", "harmony", "mv2h")
# MuseScore writes key signatures on every track; pretty_midi reads them fine but warns.
warnings.filterwarnings("ignore", message="Tempo, Key or Time signature change events found on non-zero tracks")


class ToolError(RuntimeError):
    """MuseScore or MV2H failed on a file (reported per piece, never fatal to a run)."""


# --------------------------------------------------------------------------- MuseScore


def musescore(src: Path, dst: Path, timeout_s: float = 120) -> Path:
    """Convert with MuseScore 3 headless (format by extension: .mid, .musicxml, .png)."""
    dst.unlink(missing_ok=True)
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    try:
        res = subprocess.run(
            [MUSESCORE, "-o", str(dst), str(src)], env=env, capture_output=True, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired as exc:
        raise ToolError(f"MuseScore timed out after {timeout_s:g} s on {src.name}") from exc
    made = dst if dst.suffix != ".png" else dst.with_name(f"{dst.stem}-1.png")
    if res.returncode != 0 or not made.is_file():
        raise ToolError(f"MuseScore failed ({res.returncode}) on {src.name}: {(res.stderr or res.stdout)[-800:]}")
    return made


# --------------------------------------------------------------------------- playback accuracy


def merge_unisons(rows: list[tuple[float, float, int]]) -> list[tuple[float, float, int]]:
    """Same-pitch overlaps sound as one note: a same-onset duplicate is dropped, an earlier
    note still sounding ends where the later one starts (the truth render's rule)."""
    rows = sorted(rows, key=lambda r: (r[0], r[2], -r[1]))
    active: dict[int, list] = {}
    kept: list[list] = []
    for on, off, pitch in rows:
        prev = active.get(pitch)
        if prev is not None and on < prev[1] - 1e-6:
            if abs(on - prev[0]) < 1e-6:
                continue
            prev[1] = on
        cur = [on, off, pitch]
        kept.append(cur)
        active[pitch] = cur
    return [(a, b, p) for a, b, p in kept if b - a > 1e-6]


@dataclass
class Playback:
    """What MuseScore plays of a score: notes on the audio clock and its tempo map."""

    intervals: np.ndarray
    pitches: np.ndarray
    initial_bpm: float
    mean_bpm: float  # quarter notes per minute from tick 0 to the last note's end
    pm: object  # pretty_midi.PrettyMIDI, for tick -> time

    def seconds_at_quarter(self, ql: float) -> float:
        return float(self.pm.tick_to_time(round(ql * self.pm.resolution)))


def playback(mid: Path, offset_s: float) -> Playback:
    import pretty_midi

    pm = pretty_midi.PrettyMIDI(str(mid))
    rows = [
        (n.start + offset_s, n.end + offset_s, n.pitch)
        for inst in pm.instruments
        if not inst.is_drum
        for n in inst.notes
    ]
    rows = merge_unisons(rows)
    iv = np.array([r[:2] for r in rows], dtype=float).reshape(-1, 2)
    pitches = np.array([r[2] for r in rows], dtype=int)
    _, tempi = pm.get_tempo_changes()
    end = max((n.end for inst in pm.instruments for n in inst.notes), default=0.0)
    quarters = pm.time_to_tick(end) / pm.resolution
    mean = 60.0 * quarters / end if end > 0 else float(tempi[0])
    return Playback(iv, pitches, float(tempi[0]), float(mean), pm)


def note_f1(ref_iv: np.ndarray, ref_p: np.ndarray, est_iv: np.ndarray, est_p: np.ndarray) -> dict:
    """Onset F1 (50 ms, offsets ignored) and onset+offset F1 (offset ratio 0.2) with mir_eval."""
    import mir_eval

    if len(est_p) == 0 or len(ref_p) == 0:
        return {"onset_f1": 0.0, "onset_offset_f1": 0.0, "precision": 0.0, "recall": 0.0}

    def hz(m):
        return 440.0 * 2.0 ** ((np.asarray(m, dtype=float) - 69) / 12)

    p, r, f, _ = mir_eval.transcription.precision_recall_f1_overlap(
        ref_iv, hz(ref_p), est_iv, hz(est_p), onset_tolerance=ONSET_TOLERANCE_S, offset_ratio=None
    )
    _, _, f_off, _ = mir_eval.transcription.precision_recall_f1_overlap(
        ref_iv, hz(ref_p), est_iv, hz(est_p), onset_tolerance=ONSET_TOLERANCE_S, offset_ratio=OFFSET_RATIO
    )
    return {"onset_f1": float(f), "onset_offset_f1": float(f_off), "precision": float(p), "recall": float(r)}


# --------------------------------------------------------------------------- MV2H


def build_mv2h(out_dir: Path) -> Path:
    """Build MV2H from ../shared/tools/mv2h into ``out_dir`` unless it is there already."""
    if not (out_dir / "mv2h" / "Main.class").is_file():
        res = subprocess.run(["bash", str(MV2H_SRC / "build.sh"), str(out_dir)], capture_output=True, text=True)
        if res.returncode != 0:
            raise ToolError(f"MV2H build failed: {res.stdout[-500:]}{res.stderr[-1500:]}")
    return out_dir


_TIME_FIELDS = {"Note": (2, 3, 4), "Tatum": (1,), "Chord": (1,), "Key": (3,), "Hierarchy": (4,)}


def mv2h_text(mid: Path, out: Path, shift_s: float, classes: Path) -> Path:
    """MIDI -> MV2H text with the Converter, every time moved ``shift_s`` later (ms)."""
    raw = out.with_suffix(".raw.txt")
    res = subprocess.run(
        ["java", "-cp", str(classes), "mv2h.tools.Converter", "-i", str(mid), "-o", str(raw)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if res.returncode != 0 or not raw.is_file():
        raise ToolError(f"MV2H Converter failed on {mid.name}: {res.stderr[-800:]}")
    shift_ms = round(shift_s * 1000)
    lines = []
    for line in raw.read_text().splitlines():
        parts = line.split(" ")
        for i in _TIME_FIELDS.get(parts[0], ()):
            if i < len(parts):
                parts[i] = str(int(parts[i]) + shift_ms)
        lines.append(" ".join(parts))
    out.write_text("\n".join(lines) + "\n")
    raw.unlink()
    return out


_MV2H_LINE = re.compile(r"^(Multi-pitch|Voice|Meter|Value|Harmony|MV2H): ([0-9.eE-]+)\s*$", re.M)
_MV2H_PROGRESS = re.compile(rb"Evaluating alignment (\d+) / (\d+)")
_MV2H_NAMES = {
    "Multi-pitch": "multi_pitch",
    "Voice": "voice",
    "Meter": "meter",
    "Value": "value",
    "Harmony": "harmony",
    "MV2H": "mv2h",
}


def mv2h(truth_txt: Path, est_txt: Path, classes: Path, timeout_s: float) -> dict:
    """``{multi_pitch, voice, meter, value, harmony, mv2h}``, or ``{"timeout": True, ...}``.

    MV2H scores every equally good alignment (-a) one by one, about a thousand a second; on a
    repetitive melody there can be billions (upstream issue #13). Once its own progress line
    shows that the rest cannot finish inside ``timeout_s``, it is stopped and reported as
    timed out right away instead of at the deadline.
    """
    cmd = ["java", "-cp", str(classes), "mv2h.Main", "-g", str(truth_txt), "-t", str(est_txt), "-a"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    tail = bytearray()

    def read() -> None:
        while chunk := proc.stdout.read1(65536):
            tail.extend(chunk)
            del tail[:-65536]

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    started = time.monotonic()
    while proc.poll() is None:
        time.sleep(0.25)
        elapsed = time.monotonic() - started
        progress = _MV2H_PROGRESS.findall(bytes(tail[-200:]))
        done, total = (int(x) for x in progress[-1]) if progress else (0, 0)
        hopeless = elapsed > 3 and done > 0 and (total - done) * elapsed / done > timeout_s - elapsed
        if elapsed >= timeout_s or hopeless:
            proc.kill()
            proc.wait()
            reader.join()
            return {
                "timeout": True,
                "timeout_s": timeout_s,
                "alignments": total or None,
                "stopped_after_s": round(elapsed, 1),
            }
    reader.join()
    output = bytes(tail).decode(errors="replace")
    found = dict(_MV2H_LINE.findall(output))
    if proc.returncode != 0 or "MV2H" not in found:
        raise ToolError(f"MV2H failed ({proc.returncode}): {output[-800:]}")
    return {_MV2H_NAMES[k]: float(v) for k, v in found.items()}


# --------------------------------------------------------------------------- readability


@dataclass
class Readability:
    """Counted in the MusicXML text, as a reader sees the page."""

    title: str
    composer: str
    time_signature: str  # first one, "n/d"; "none" if the score has none
    fifths: int | None  # first key signature
    measures: int
    noteheads: int
    tied: int
    short: int  # 16th-or-shorter noteheads, by notated <type>
    voices_per_staff: float
    first_implicit: bool
    first_measure_ql: float  # implicit first measure: its content; otherwise the time signature's bar

    @property
    def tied_fraction(self) -> float:
        return self.tied / self.noteheads if self.noteheads else 0.0

    @property
    def noteheads_per_measure(self) -> float:
        return self.noteheads / self.measures if self.measures else 0.0

    @property
    def title_ok(self) -> bool:
        return self.title.strip().lower() not in PLACEHOLDER_TITLES

    @property
    def composer_ok(self) -> bool:
        """No library placeholder; no composer at all is fine (nothing was known)."""
        name = self.composer.strip().lower()
        return not (name in PLACEHOLDER_COMPOSERS or name.startswith("music21"))


def _measure_content_ql(measure: ET.Element, divisions: int) -> float:
    pos = end = 0
    for el in measure:
        if el.tag == "note" and el.find("grace") is None and el.find("chord") is None:
            pos += int(float(el.findtext("duration", "0")))
        elif el.tag == "backup":
            pos -= int(float(el.findtext("duration", "0")))
        elif el.tag == "forward":
            pos += int(float(el.findtext("duration", "0")))
        end = max(end, pos)
    return end / divisions


def readability(xml: Path) -> Readability:
    """Noteheads are printed ``<note>``s that are not rests, grace or cue notes (a chord of three
    is three heads); tied ones carry a ``<tie>``/``<tied>`` start, stop or continue. Voices are
    the distinct ``<voice>`` values among a staff's printed notes and rests in one measure,
    averaged over (part, staff, measure)."""
    root = ET.parse(xml).getroot()
    if root.tag != "score-partwise":
        raise ToolError(f"{xml.name}: expected score-partwise MusicXML, got {root.tag}")
    title = root.findtext("work/work-title") or root.findtext("movement-title") or ""
    composer = next((c.text or "" for c in root.findall("identification/creator") if c.get("type") == "composer"), "")
    ts, fifths = "none", None
    heads = tied = short = 0
    voice_counts: list[int] = []
    parts = root.findall("part")
    first_measure_ql, first_implicit = 0.0, False
    for pi, part in enumerate(parts):
        divisions = 1
        for mi, measure in enumerate(part.findall("measure")):
            for attrs in measure.findall("attributes"):
                divisions = int(float(attrs.findtext("divisions", str(divisions))))
                time = attrs.find("time")
                if ts == "none" and time is not None and time.findtext("beats"):
                    ts = f"{time.findtext('beats')}/{time.findtext('beat-type')}"
                if fifths is None and attrs.findtext("key/fifths") is not None:
                    fifths = int(attrs.findtext("key/fifths"))
            if pi == 0 and mi == 0:
                first_implicit = measure.get("implicit") == "yes"
                first_measure_ql = _measure_content_ql(measure, divisions)
            voices: dict[str, set[str]] = {}
            for n in measure.findall("note"):
                if n.find("grace") is not None or n.find("cue") is not None or n.get("print-object") == "no":
                    continue
                voices.setdefault(n.findtext("staff", "1"), set()).add(n.findtext("voice", "1"))
                if n.find("rest") is not None:
                    continue
                heads += 1
                ties = {t.get("type") for t in n.findall("tie")} | {t.get("type") for t in n.findall("notations/tied")}
                tied += bool(ties & {"start", "stop", "continue"})
                short += n.findtext("type", "") in SHORT_TYPES
            voice_counts += [len(v) for v in voices.values()]
    if not first_implicit and ts != "none":
        beats, beat_type = ts.split("/")
        first_measure_ql = sum(float(b) for b in beats.split("+")) * 4.0 / float(beat_type)
    return Readability(
        title=title,
        composer=composer,
        time_signature=ts,
        fifths=fifths,
        measures=len(parts[0].findall("measure")) if parts else 0,
        noteheads=heads,
        tied=tied,
        short=short,
        voices_per_staff=float(np.mean(voice_counts)) if voice_counts else 0.0,
        first_implicit=first_implicit,
        first_measure_ql=first_measure_ql,
    )


def beat_ql(time_signature: str) -> float:
    """The beat a reader counts: dotted quarter in 6/8, 9/8, 12/8; the denominator otherwise."""
    beats, beat_type = (int(x) for x in time_signature.split("/"))
    unit = 4.0 / beat_type
    return 3 * unit if beats % 3 == 0 and beats > 3 else unit


# --------------------------------------------------------------------------- one score


@dataclass
class Truth:
    """What a score is measured against: the render's notes and the truth score's own figures."""

    intervals: np.ndarray  # rendered notes, seconds in the WAV
    pitches: np.ndarray
    mv2h_txt: Path
    time_signature: str
    fifths: int | None
    mean_bpm: float
    first_barline_s: float
    beat_s: float  # the truth's beat at its first tempo, for the barline tolerance


def _measure(
    xml: Path, offset_s: float, workdir: Path, mv2h_classes: Path, ref_iv: np.ndarray, ref_p: np.ndarray
) -> tuple[dict, Readability, Playback, Path]:
    workdir.mkdir(parents=True, exist_ok=True)
    mid = musescore(xml, workdir / "readback.mid")
    play = playback(mid, offset_s)
    read = readability(xml)
    text = mv2h_text(mid, workdir / "mv2h.txt", offset_s, mv2h_classes)
    out = {
        "offset_s": offset_s,
        "n_notes_played": len(play.pitches),
        **note_f1(ref_iv, ref_p, play.intervals, play.pitches),
        "tempo_initial_bpm": play.initial_bpm,
        "tempo_mean_bpm": play.mean_bpm,
        "first_barline_s": float(offset_s + play.seconds_at_quarter(read.first_measure_ql)),
        **asdict(read),
        "tied_fraction": read.tied_fraction,
        "noteheads_per_measure": read.noteheads_per_measure,
        "title_ok": read.title_ok,
        "composer_ok": read.composer_ok,
    }
    return out, read, play, text


def measure_truth(
    xml: Path, lead_in_s: float, ref_iv: np.ndarray, ref_p: np.ndarray, workdir: Path, mv2h_classes: Path
) -> tuple[dict, Truth]:
    """The truth score through the same route: its figures, and the :class:`Truth` for the others.
    Its read-back F1 against the render checks the route itself (1.0 but where MuseScore does
    not re-strike a pitch still held in another voice of the same staff)."""
    out, read, play, text = _measure(xml, lead_in_s, workdir, mv2h_classes, ref_iv, ref_p)
    out["mv2h"] = dict.fromkeys(MV2H_KEYS, 1.0)
    truth = Truth(
        ref_iv,
        ref_p,
        text,
        read.time_signature,
        read.fifths,
        play.mean_bpm,
        out["first_barline_s"],
        60.0 / play.initial_bpm * beat_ql(read.time_signature),
    )
    return out, truth


def measure_score(
    xml: Path, offset_s: float, truth: Truth, workdir: Path, mv2h_classes: Path, mv2h_timeout_s: float
) -> dict:
    """Every metric of one transcribed score against ``truth``."""
    out, read, play, text = _measure(xml, offset_s, workdir, mv2h_classes, truth.intervals, truth.pitches)
    out["mv2h"] = mv2h(truth.mv2h_txt, text, mv2h_classes, mv2h_timeout_s)
    error_s = out["first_barline_s"] - truth.first_barline_s
    out.update(
        {
            "time_signature_ok": read.time_signature == truth.time_signature,
            "key_ok": read.fifths == truth.fifths,
            "tempo_ok": bool(abs(play.mean_bpm - truth.mean_bpm) <= 0.04 * truth.mean_bpm),
            "first_barline_error_s": error_s,
            "first_barline_ok": bool(abs(error_s) <= max(0.1, truth.beat_s / 4)),
        }
    )
    return out
