"""Writing a score out: MusicXML, MIDI, and pictures of its pages (SVG per page, one PDF).

Scores built by :func:`rescored_ray.notation.notate` are complete (measures, beams,
accidentals, tuplets), so MusicXML export skips music21's deep copy and generic
``makeNotation`` pass, and MIDI is written directly with mido (music21's writer took
most of a minute on a 3,000-note song).
"""

from __future__ import annotations

import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from music21 import chord, meter, stream, tempo
from music21.musicxml import m21ToXml

from rescored_ray.errors import NonRetryableError

STAGE = "notation"
DEFAULT_BPM = 120.0


def _fully_notated(score: stream.Score) -> bool:
    """True for scores built by :func:`notate` (measures, accidentals, beams done)."""
    if not isinstance(score, stream.Score):
        return False
    parts = list(score.parts)
    return bool(parts) and all(
        p.getElementsByClass(stream.Measure).first() is not None and p.streamStatus.accidentals and p.streamStatus.beams
        for p in parts
    )


def write_musicxml(score: stream.Score, path: str | Path) -> Path:
    """Write uncompressed MusicXML to exactly ``path`` (any suffix, e.g. a temp name).

    Scores from :func:`notate` are already complete, so music21's deep copy and
    ``makeNotation`` pass are skipped (the slow part of a naive export); any
    other score gets the full treatment. ``music21.Stream.write`` is not used
    because it appends ``.musicxml`` to paths without a suffix.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    exporter = m21ToXml.GeneralObjectExporter(score)
    exporter.makeNotation = not _fully_notated(score)
    path.write_bytes(exporter.parse())
    return path


_MIDI_TPQ = 480


def _midi_events(part: stream.Stream[Any], channel: int) -> list[tuple[int, int, Any]]:
    """(tick, order, message) for one part; tied notes become one MIDI note."""
    import mido

    events: list[tuple[int, int, Any]] = []
    open_notes: dict[int, list[int]] = {}  # midi pitch -> [start_tick, end_tick, velocity]
    finished: list[tuple[int, int, int, int]] = []
    flat = part.flatten()
    for el in flat.notes:
        if el.duration.quarterLength <= 0 or el.duration.isGrace:
            continue
        start = round(float(flat.elementOffset(el)) * _MIDI_TPQ)
        end = start + round(float(el.duration.quarterLength) * _MIDI_TPQ)
        members = list(el.notes) if isinstance(el, chord.Chord) else [el]
        for n in members:
            if not hasattr(n, "pitch"):
                continue  # unpitched percussion
            midi = int(min(127, max(0, round(n.pitch.ps))))
            t = n.tie if n.tie is not None else getattr(el, "tie", None)
            vel = n.volume.velocity if n.volume.velocity is not None else el.volume.velocity
            vel = int(min(127, max(1, vel if vel is not None else 80)))
            held = open_notes.get(midi)
            if t is not None and t.type in ("continue", "stop") and held is not None and held[1] >= start:
                held[1] = max(held[1], end)
            else:
                if held is not None:
                    finished.append((held[0], held[1], midi, held[2]))
                open_notes[midi] = [start, end, vel]
            if t is None or t.type == "stop":
                held = open_notes.pop(midi)
                finished.append((held[0], held[1], midi, held[2]))
    finished.extend((h[0], h[1], p, h[2]) for p, h in open_notes.items())
    for start, end, midi, vel in finished:
        events.append((start, 1, mido.Message("note_on", channel=channel, note=midi, velocity=vel)))
        events.append((end, 0, mido.Message("note_off", channel=channel, note=midi, velocity=0)))
    return events


def write_midi(score: stream.Score, path: str | Path) -> Path:
    """Write a type-1 standard MIDI file: a tempo track plus one track per part/staff.

    Written directly with mido (a basic-pitch/pretty-midi dependency): music21's
    MIDI writer copies the whole score and looks up dynamics context for every
    note, which took most of a minute on a 3,000-note song. Tied notes become
    single MIDI notes; tempo marks keep their (sounding) quarter-note BPM.
    """
    import mido

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parts: list[stream.Stream[Any]] = (list(score.parts) if isinstance(score, stream.Score) else []) or [score]
    mf = mido.MidiFile(type=1, ticks_per_beat=_MIDI_TPQ)

    conductor = mido.MidiTrack()
    title = score.metadata.title if score.metadata is not None and score.metadata.title else "Transcription"
    conductor.append(mido.MetaMessage("track_name", name=str(title)[:120], time=0))
    meta_events: list[tuple[int, int, Any]] = []
    marks = score.flatten().getElementsByClass(tempo.MetronomeMark)
    for mm in marks:
        bpm = mm.getQuarterBPM() or DEFAULT_BPM
        tick = round(float(mm.getOffsetInHierarchy(score)) * _MIDI_TPQ)
        meta_events.append((tick, 0, mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm))))
    if not meta_events:
        meta_events.append((0, 0, mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(DEFAULT_BPM))))
    ts = score.flatten().getElementsByClass(meter.TimeSignature).first()
    if ts is not None:
        meta_events.append(
            (0, 0, mido.MetaMessage("time_signature", numerator=ts.numerator, denominator=ts.denominator))
        )
    mf.tracks.append(_track(conductor, meta_events))

    channels = [c for c in range(16) if c != 9]
    for i, part in enumerate(parts):
        channel = channels[i % len(channels)]
        track = mido.MidiTrack()
        inst = part.getInstrument(returnDefault=True)
        name = getattr(part, "partName", None) or (inst.partName if inst else None) or f"Part {i + 1}"
        track.append(mido.MetaMessage("track_name", name=str(name)[:120], time=0))
        program = inst.midiProgram if inst is not None and inst.midiProgram is not None else 0
        track.append(mido.Message("program_change", channel=channel, program=int(program) % 128, time=0))
        mf.tracks.append(_track(track, _midi_events(part, channel)))
    mf.save(str(path))
    return path


def _track(track: Any, events: list[tuple[int, int, Any]]) -> Any:
    """Append absolute-tick events to a mido track as delta times (note-offs first at a tick)."""
    events.sort(key=lambda e: (e[0], e[1]))
    now = 0
    for tick, _order, msg in events:
        track.append(msg.copy(time=max(0, tick - now)))
        now = max(now, tick)
    return track


_VEROVIO_OPTIONS = {
    "pageWidth": 2100,
    "pageHeight": 2970,
    "scale": 40,
    "adjustPageHeight": False,
    "footer": "none",
    "breaks": "auto",
}


def _toolkit(musicxml: str | Path) -> Any:
    """A verovio toolkit with the score loaded (``musicxml`` a path, or the MusicXML text)."""
    import verovio  # lazy: only previews and pages need it

    verovio.enableLog(False)
    # verovio keeps its default resource path per thread (set in the thread that first
    # imported it, e.g. a worker thread importing partitura): a toolkit made in any other
    # thread found no fonts and loaded nothing. So every toolkit is given its path.
    tk = verovio.toolkit(False)
    tk.setResourcePath(str(Path(verovio.__file__).parent / "data"))
    tk.setOptions(_VEROVIO_OPTIONS)
    text = str(musicxml)
    if isinstance(musicxml, str) and text.lstrip().startswith("<"):
        ok = tk.loadData(text)
    else:
        if not Path(text).is_file():
            raise NonRetryableError(f"MusicXML file not found: {text}", stage=STAGE)
        ok = tk.loadFile(text)
    if not ok or tk.getPageCount() < 1:
        raise NonRetryableError("verovio could not load the MusicXML score", stage=STAGE)
    return tk


def render_pages(musicxml: str | Path) -> list[str]:
    """Every page of the score as SVG (A4 proportions), in order."""
    tk = _toolkit(musicxml)
    return [str(tk.renderToSVG(page)) for page in range(1, tk.getPageCount() + 1)]


def render_svg(musicxml: str | Path, page: int = 1) -> str:
    """One page (1-based, clamped to the page count) of a MusicXML score as SVG."""
    tk = _toolkit(musicxml)
    return str(tk.renderToSVG(min(max(1, int(page)), tk.getPageCount())))


def write_pdf(pages: list[str], path: str | Path) -> Path:
    """All pages in one A4 PDF, vector throughout.

    Typst (its Python wheel carries the compiler and its fonts: no system libraries)
    places each page's SVG on an A4 page. verovio writes a few symbols (the note in a
    metronome mark) as text in its music font, which no PDF renderer has; they become
    the font's own outlines first (:func:`_outline_music_text`).
    """
    import typst

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rescored_pdf_") as tmp:
        folder = Path(tmp)
        body = []
        for number, svg in enumerate(pages, start=1):
            (folder / f"page-{number}.svg").write_text(_outline_music_text(svg), encoding="utf-8")
            body.append(f'#image("page-{number}.svg", width: 100%)')
        (folder / "score.typ").write_text(
            '#set page(paper: "a4", margin: 0pt)\n' + "\n#pagebreak()\n".join(body) + "\n"
        )
        try:
            typst.compile(str(folder / "score.typ"), output=str(path))
        except Exception as exc:
            raise NonRetryableError(f"could not typeset the score as PDF: {exc}", stage=STAGE) from exc
    return path


_MUSIC_FONTS = ("Leipzig", "Bravura", "Leland", "Petaluma", "Gootville")
_SVG = "{http://www.w3.org/2000/svg}"


@lru_cache(maxsize=4)
def _glyphs(font: str) -> dict[str, tuple[str | None, float]]:
    """SMuFL code point -> (SVG path, horizontal advance in font units) from verovio's font data."""
    import verovio
    from lxml import etree

    data = Path(verovio.__file__).parent / "data"
    out: dict[str, tuple[str | None, float]] = {}
    for g in etree.parse(str(data / f"{font}.xml")).getroot().iter("g"):
        code = g.get("c")
        glyph = data / font / f"{code}.xml"
        path = etree.parse(str(glyph)).getroot().find("path") if glyph.is_file() else None
        out[code] = (path.get("d") if path is not None else None, float(g.get("h-a-x") or 0.0))
    return out


def _outline_music_text(svg: str) -> str:
    """Draw music-font text (the note of a metronome mark) as outlines.

    A glyph run that opens its ``<text>`` becomes paths placed at the text's position,
    and the text after it is moved right by the glyphs' advance, so "= 90" keeps its
    place. Runs elsewhere inside a text are left alone (verovio writes none).
    """
    from lxml import etree

    root = etree.fromstring(svg.encode("utf-8"))
    for text in root.iter(f"{_SVG}text"):
        _hoist_position(text)
        x, y = _position(text)
        runs = [t for t in text.iter(f"{_SVG}tspan") if t.get("font-family") in _MUSIC_FONTS and t.text]
        if not runs or x is None or "".join(text.itertext()).strip().find(runs[0].text.strip()) != 0:
            continue
        run = runs[0]
        glyphs = _glyphs(run.get("font-family"))
        size = float(run.get("font-size", "0").rstrip("px") or 0)
        group = etree.Element(f"{_SVG}g")
        advance = 0.0
        for ch in run.text:
            d, adv = glyphs.get(f"{ord(ch):04X}", (None, 0.0))
            if d:
                g = etree.SubElement(
                    group, f"{_SVG}g", transform=f"translate({x + advance:.1f},{y}) scale({size / 1000:.4f})"
                )
                etree.SubElement(g, f"{_SVG}path", transform="scale(1,-1)", d=d)
            advance += adv * size / 1000
        run.text = None
        following = next(
            (
                t
                for t in text.iter(f"{_SVG}tspan")
                if t is not run and t.text and t.text.strip() and _after(text, run, t)
            ),
            None,
        )
        if following is not None:
            following.set("dx", f"{advance:.1f}")
        text.addprevious(group)
    return str(etree.tostring(root, encoding="unicode"))


def _hoist_position(text: Any) -> None:
    """Move the position (and anchor) of a ``<text>``'s first positioned tspan onto the text
    itself, and drop its ``font-size="0px"`` (its tspans carry the real sizes): Typst's SVG
    reader placed such texts at the page's left edge (titles, tempo marks)."""
    if text.get("font-size") in ("0", "0px"):
        del text.attrib["font-size"]
    if text.get("x") is not None:
        return
    for el in text.iter(f"{_SVG}tspan"):
        if el.get("x") is not None and el.get("y") is not None:
            for attr in ("x", "y", "text-anchor"):
                if el.get(attr) is not None:
                    text.set(attr, el.attrib.pop(attr))
            return


def _position(text: Any) -> tuple[float | None, float | None]:
    """Where a ``<text>`` starts drawing: its own x/y, or those of its first positioned tspan."""
    for el in text.iter():
        if el.get("x") is not None and el.get("y") is not None:
            return float(el.get("x")), float(el.get("y"))
    return None, None


def _after(text: Any, first: Any, other: Any) -> bool:
    order = list(text.iter())
    return order.index(other) > order.index(first)
