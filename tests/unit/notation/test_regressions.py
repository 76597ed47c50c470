"""The score a musician gets from real renders, through real Basic Pitch: meters, pickups,
note values, hands and spelling. Short FluidSynth renders of music21's corpus (and one
texture built here), each transcribed once for the module; checks read the written MusicXML.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from music21 import key, meter, note, stream

from rescored_ray.config import NotationConfig, PipelineConfig, TranscriptionConfig
from rescored_ray.decode import decode_audio
from rescored_ray.notation import notate, write_musicxml
from rescored_ray.pipeline import Pipeline
from rescored_ray.transcription import Transcriber
from tests import media
from tests.unit.notation.helpers import parse_xml, tied_fraction

pytestmark = pytest.mark.slow


def _alberti_in_b_flat():
    """A melody in B-flat major over an Alberti bass (B-flat3 F4 D4 F4) that crosses middle C:
    the accompaniment lies between F3 and F4, the melody between A4 and G5."""
    s = stream.Score()
    rh, lh = stream.Part(), stream.Part()
    melody = [
        (70, 2),
        (72, 1),
        (74, 1),
        (75, 2),
        (74, 2),
        (72, 1),
        (70, 1),
        (69, 2),
        (70, 4),
        (74, 2),
        (75, 1),
        (77, 1),
        (79, 2),
        (77, 2),
        (75, 1),
        (74, 1),
        (72, 2),
        (70, 4),
    ]
    harmony = [
        (58, 65, 62),
        (58, 65, 62),
        (55, 63, 58),
        (53, 60, 57),
        (58, 65, 62),
        (58, 65, 62),
        (55, 63, 58),
        (53, 60, 57),
        (58, 65, 62),
    ]
    for part in (rh, lh):
        part.insert(0, meter.TimeSignature("4/4"))
        part.insert(0, key.Key("B-"))
    for p, ql in melody:
        rh.append(note.Note(p, quarterLength=ql))
    for root, fifth, third in harmony:
        for p in (root, fifth, third, fifth) * 2:
            lh.append(note.Note(p, quarterLength=0.5))
    s.insert(0, rh.makeMeasures())
    s.insert(0, lh.makeMeasures())
    return s


PIECES = {
    # name: (corpus path or builder, tune number, tempo, seconds, GM program)
    "bwv17.7": ("bach/bwv17.7", None, 92, 22.0, 0),  # 3/4 chorale with a one-beat pickup
    "donnybrook": ("oneills1850/0001-0050", 5, 150, 16.0, 73),  # a 6/8 jig on the flute
    "alberti": (_alberti_in_b_flat, None, 96, 26.0, 0),
}


@pytest.fixture(scope="module")
def scores(tmp_path_factory):
    """name -> (rendered piece, NotationResult, written MusicXML path)."""
    out = tmp_path_factory.mktemp("regressions")
    transcriber = Transcriber(TranscriptionConfig(stems=["mix"]))

    def one(name):
        src, number, bpm, seconds, program = PIECES[name]
        score = src() if callable(src) else media.load_score(src, number)
        truth, tempo_map = media.prepare_score(score, tempo=bpm, max_seconds=seconds)
        piece = media.render_score(out, truth, tempo_map, name=name, source=name, programs=program)
        audio = decode_audio(piece.path, max_duration_s=120)
        notes = transcriber.transcribe(audio)
        result = notate({"mix": notes}, NotationConfig(), audio=audio.samples, sample_rate=audio.sample_rate)
        return name, (piece, result, write_musicxml(result.score, out / f"{name}.musicxml"))

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(one, PIECES))


def _first_barline_s(result) -> float:
    first = result.score.parts[0].getElementsByClass(stream.Measure).first()
    return result.time_offset_s + float(first.duration.quarterLength) * 60.0 / result.tempo_bpm


def test_a_chorale_in_three_with_its_pickup(scores):
    piece, result, xml = scores["bwv17.7"]
    assert result.time_signature == "3/4"
    assert result.pickup_ql == 1.0
    assert '<measure implicit="yes" number="0"' in xml.read_text()
    truth_barline = piece.lead_in_s + 60.0 / 92
    assert abs(_first_barline_s(result) - truth_barline) <= 0.1
    # barlines stay in place: bar 5 starts where the truth's does (a one-beat pickup, four 3/4 bars)
    m5 = parse_xml(xml).parts[0].measure(5)
    assert abs(result.time_offset_s + float(m5.offset) * 60 / result.tempo_bpm - (piece.lead_in_s + 13 * 60 / 92)) < 0.1


def test_a_chorale_s_quarters_come_out_as_quarters(scores):
    _, _result, xml = scores["bwv17.7"]
    parsed = parse_xml(xml)
    assert tied_fraction(parsed) < 0.15
    types = [el.duration.type for el in parsed.recurse().notes]
    short = sum(t in ("16th", "32nd") for t in types)
    assert max(set(types), key=types.count) == "quarter" and short <= len(types) / 10


def test_a_jig_is_in_six_eight(scores):
    _, result, xml = scores["donnybrook"]
    assert result.time_signature == "6/8"
    mark = parse_xml(xml).recurse().getElementsByClass("MetronomeMark").first()
    assert mark.referent.quarterLength == 1.5  # dotted-quarter beats
    assert result.pickup_ql == 0.5


def test_an_alberti_bass_keeps_the_left_hand_and_flats_are_flats(scores):
    _, result, xml = scores["alberti"]
    parsed = parse_xml(xml)
    rh, lh = parsed.parts
    lh_pitches = [p.midi for el in lh.recurse().notes for p in el.pitches]
    rh_pitches = [p.midi for el in rh.recurse().notes for p in el.pitches]
    accompaniment = {53, 55, 57, 58, 60, 62, 63, 65}
    in_left = sum(p in accompaniment for p in lh_pitches)
    in_right = sum(p in accompaniment and p < 68 for p in rh_pitches)
    assert in_left >= 0.9 * (in_left + in_right)
    assert result.key == "Bb major"
    assert lh.recurse().getElementsByClass(key.KeySignature).first().sharps == -2
    names = {p.name for el in parsed.recurse().notes for p in el.pitches}
    assert "B-" in names and "E-" in names and not names & {"A#", "D#"}


def test_the_title_comes_from_the_source(tmp_path, scores):
    piece, _, _ = scores["bwv17.7"]
    song = tmp_path / "Ach, lieben Christen, seid getrost.wav"
    song.write_bytes(piece.path.read_bytes())
    cfg = PipelineConfig.model_validate({"separation": {"model": "none"}, "transcription": {"stems": ["mix"]}})
    result = Pipeline(cfg).run(str(song), tmp_path / "out")
    assert result.title == "Ach, lieben Christen, seid getrost"
    text = (tmp_path / "out" / "score.musicxml").read_text()
    assert "Ach, lieben Christen, seid getrost" in text and "Music21" not in text
    assert json.loads((tmp_path / "out" / "result.json").read_text())["title"] == "Ach, lieben Christen, seid getrost"
    assert not [w for w in result.warnings if "pages" in w], result.warnings
    files = set(result.outputs)
    assert {"score.pdf", "pages/page-1.svg", "preview.svg"} <= files
    assert (tmp_path / "out" / "score.pdf").read_bytes()[:4] == b"%PDF"
    assert result.pickup_ql == 1.0 and result.tempo_changes[0][0] == 0
