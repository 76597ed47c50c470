"""Writers: MusicXML, MIDI, page SVGs and the PDF."""

from __future__ import annotations

import re

import mido
import pytest

from rescored_ray.config import NotationConfig
from rescored_ray.errors import NonRetryableError
from rescored_ray.notation import notate, render_pages, render_svg, write_midi, write_musicxml, write_pdf
from rescored_ray.notation.export import _outline_music_text
from rescored_ray.types import Note
from tests.unit.notation.helpers import midi_notes


@pytest.fixture(scope="module")
def long_score(tmp_path_factory):
    """Three pages of quarter notes at 120 BPM, with a tempo mark."""
    notes = [Note(i * 0.5, i * 0.5 + 0.45, 60 + (i * 7) % 19) for i in range(360)]
    result = notate(notes, NotationConfig(tempo_override=120, time_signature="4/4", title="Long"))
    path = write_musicxml(result.score, tmp_path_factory.mktemp("long") / "score.musicxml")
    return result, path


def test_pages_and_pdf(long_score, tmp_path):
    _, path = long_score
    pages = render_pages(path)
    assert len(pages) >= 2 and all(p.lstrip().startswith("<svg") for p in pages)
    assert render_svg(path, page=2).count('class="note"') == pages[1].count('class="note"') > 0
    pdf = write_pdf(pages, tmp_path / "score.pdf")
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF")
    assert len(re.findall(rb"/Type\s*/Page\b(?!s)", data)) == len(pages)
    with pytest.raises(NonRetryableError):
        render_pages(tmp_path / "missing.musicxml")


def test_music_font_text_becomes_outlines_for_the_pdf(long_score):
    _, path = long_score
    page = render_pages(path)[0]
    assert 'font-family="Leipzig"' in page  # the metronome mark's note, as text
    ready = _outline_music_text(page)
    assert 'font-family="Leipzig">' not in ready.replace("/>", "")  # no glyph text left
    assert ready.count("<path") > page.count("<path")  # drawn as outlines instead
    assert 'font-size="0px"' not in ready


def test_midi_joins_ties_and_keeps_the_tempo(tmp_path):
    result = notate([Note(0.0, 200.0, 60, stem="vocals")], NotationConfig(tempo_override=120, time_signature="4/4"))
    mid = write_midi(result.score, tmp_path / "long.mid")
    assert midi_notes(mid) == [(0, 400 * 480, 60)]
    tempos = [m.tempo for t in mido.MidiFile(str(mid)).tracks for m in t if m.type == "set_tempo"]
    assert tempos == [mido.bpm2tempo(120)]


def test_writers_use_exactly_the_given_path(tmp_path):
    # The pipeline writes to temp names like ".score.musicxml.abc.partial" and renames them.
    result = notate([Note(0.0, 1.0, 60)], NotationConfig(tempo_override=120))
    xml = write_musicxml(result.score, tmp_path / ".score.musicxml.abc.partial")
    mid = write_midi(result.score, tmp_path / "sub" / "noext")
    assert xml == tmp_path / ".score.musicxml.abc.partial" and mid == tmp_path / "sub" / "noext"
    assert xml.read_text().lstrip().startswith("<?xml") and mid.read_bytes()[:4] == b"MThd"
