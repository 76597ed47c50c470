"""The whole pipeline, end to end, on real rendered music served over loopback HTTP."""

import json
from typing import Any

import music21
import numpy as np
import pretty_midi
import pytest
import soundfile
import verovio

from rescored_ray.config import PipelineConfig
from rescored_ray.errors import NonRetryableError, PipelineError, RetryableError
from rescored_ray.pipeline import BANDS, Pipeline
from rescored_ray.transcription import Transcriber
from tests.scoring import F1_FLOOR, intervals_f1, onset_f1


def config(tmp_path, **sections) -> PipelineConfig:
    data: dict[str, Any] = {
        "source": {"temp_dir": str(tmp_path / "tmp")},
        "separation": {"model": "none"},
        "transcription": {"stems": ["mix"]},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values) if isinstance(values, dict) else data.__setitem__(name, values)
    return PipelineConfig.model_validate(data)


@pytest.fixture(scope="module")
def transcriber():
    return Transcriber()


def score_notes_in_seconds(path, time_offset_s: float):
    """Notes of a written MusicXML as (intervals, pitches) in seconds, ties joined per pitch
    (chords carry a tie on each of their notes)."""
    score = music21.converter.parse(str(path))
    marks = list(score.recurse().getElementsByClass(music21.tempo.MetronomeMark))
    seconds_per_quarter = 60.0 / float(marks[0].getQuarterBPM() or 0.0)
    notes = []
    for staff in score.parts:
        sounding: dict[int, list[float]] = {}
        for element in staff.flatten().notes:
            start = float(element.offset)
            end = start + float(element.duration.quarterLength)
            for member in element.notes if element.isChord else [element]:
                midi = member.pitch.midi
                tie = member.tie or element.tie
                held = sounding.get(midi)
                if tie is not None and tie.type in ("stop", "continue") and held and abs(held[1] - start) < 1e-6:
                    held[1] = end
                    continue
                if held:
                    notes.append((held[0], held[1], midi))
                sounding[midi] = [start, end]
        notes.extend((a, b, midi) for midi, (a, b) in sounding.items())
    intervals = np.array(
        [[a * seconds_per_quarter + time_offset_s, b * seconds_per_quarter + time_offset_s] for a, b, _ in notes]
    )
    return intervals, np.array([m for _, _, m in notes])


def test_url_to_score_end_to_end_with_progress_and_quality(http_server, chorale, transcriber, tmp_path):
    cfg = config(tmp_path, notation={"tempo_override": chorale.tempo_bpm})
    events = []
    result = Pipeline(cfg, transcriber=transcriber).run(
        http_server.url("chorale.mp3"), tmp_path / "out", progress=lambda *e: events.append(e), job_id="job-1"
    )

    # Progress: starts at 5 % in download, grows monotonically, stays inside each stage's band.
    assert events[0][:2] == (5, "download") and events[-1] == (100, "musicxml", "Transcription complete")
    percents = [p for p, _, _ in events]
    assert percents == sorted(percents)
    bands = {"download": (5, 20), "separation": (20, 50), "transcription": (50, 90), "musicxml": (90, 100)}
    for percent, stage, _ in events:
        low, high = bands[stage]
        assert low <= percent <= high, (percent, stage)
    assert {s for _, s, _ in events} == set(bands)

    # Outputs: a MusicXML that music21 and verovio load, a MIDI with notes, the result record.
    out = tmp_path / "out"
    assert result.path("musicxml") == out / "score.musicxml"
    fixed = {"notes.csv", "preview.svg", "result.json", "score.mid", "score.musicxml", "score.pdf"}
    pages = sorted(set(result.outputs) - fixed)
    assert fixed <= set(result.outputs) and pages == [f"pages/page-{i}.svg" for i in range(1, len(pages) + 1)]
    assert pages, "no page SVGs"
    toolkit = verovio.toolkit()
    assert toolkit.loadFile(str(out / "score.musicxml")) and toolkit.getPageCount() >= 1
    midi = pretty_midi.PrettyMIDI(str(out / "score.mid"))
    assert sum(len(i.notes) for i in midi.instruments) >= result.n_notes * 0.8
    assert "<svg" in (out / "preview.svg").read_text()
    record = json.loads((out / "result.json").read_text())
    assert record["job_id"] == "job-1" and record["n_notes"] == result.n_notes > 50
    assert record["outputs"] == result.outputs and record["output_dir"] == str(out)
    assert set(record["timings"]) >= {"download", "decode", "transcription", "notation"}
    assert record["tempo_bpm"] == chorale.tempo_bpm
    assert not list((tmp_path / "tmp").iterdir()), "temp files outlived the job"
    assert not list(out.rglob("*.partial"))

    # Quality: transcription F1 above the floor, and the written score keeps it within 0.05.
    f1_notes = onset_f1(chorale, result.notes)
    intervals, pitches = score_notes_in_seconds(out / "score.musicxml", result.time_offset_s)
    f1_score = intervals_f1(chorale, intervals, pitches)
    print(f"chorale onset F1: notes {f1_notes:.3f}, MusicXML read back {f1_score:.3f}; timings {result.timings}")
    assert f1_notes >= F1_FLOOR
    assert f1_score >= f1_notes - 0.05


def test_separated_song_writes_stems_and_one_part_per_stem(band_mix, transcriber, tmp_path):
    cfg = config(
        tmp_path,
        separation={"model": "demucs_unittest", "device": "cpu"},
        transcription={"stems": ["other", "bass", "vocals"]},
    )
    result = Pipeline(cfg, transcriber=transcriber).run(str(band_mix.path), tmp_path / "out")
    assert result.stems == ["bass", "drums", "other", "vocals"]
    for name in result.stems:
        data, rate = soundfile.read(result.path("stems", name))
        assert rate == 44100 and data.shape == (round(band_mix.duration_s * 44100), 2)
    assert "separation" in result.timings
    assert set(result.n_notes_by_stem) <= {"other", "bass", "vocals"}
    # result.json says how each stem's notes were read (issue 18: per-stem settings)
    settings = json.loads(result.path("result").read_text())["transcription"]
    assert set(settings) == {"other", "bass", "vocals"}
    assert settings["vocals"]["refine"]["vibrato"] and not settings["other"]["refine"]["vibrato"]
    assert settings["vocals"]["maximum_frequency"] == 2100.0 and settings["bass"]["onset_threshold"] == 0.5
    assert all(n.stem in ("other", "bass", "vocals") for n in result.notes)
    assert music21.converter.parse(result.path("musicxml")) is not None
    assert not list((tmp_path / "tmp").iterdir())


@pytest.mark.parametrize(
    "path, error, stage, words",
    [
        ("page.html", NonRetryableError, "download", "no media found"),
        ("missing.mp3", NonRetryableError, "download", "does not exist"),
        ("status/503/song.mp3", RetryableError, "download", "will retry"),
        ("empty.mp3", NonRetryableError, "download", "empty file"),
        ("random.mp3", NonRetryableError, "decode", "not a recognised audio"),
        ("truncated.mp3", NonRetryableError, "decode", "truncated"),
        ("long.mp3", NonRetryableError, "decode", "over the 15.0 min limit"),
    ],
)
def test_bad_inputs_fail_clearly_and_leave_nothing(
    http_server, broken_inputs, transcriber, tmp_path, path, error, stage, words
):
    events = []
    with pytest.raises(error, match=words) as info:
        Pipeline(config(tmp_path), transcriber=transcriber).run(
            http_server.url(path), tmp_path / "out", progress=lambda *e: events.append(e)
        )
    assert info.value.stage == stage and info.value.retryable is (error is RetryableError)
    assert not list((tmp_path / "tmp").iterdir()), "temp files outlived the failed job"
    assert not (tmp_path / "out" / "score.musicxml").exists()
    assert events and events[0][0] == 5


def test_silence_gives_an_empty_score_and_a_warning(broken_inputs, transcriber, tmp_path):
    result = Pipeline(config(tmp_path), transcriber=transcriber).run(str(broken_inputs["silent"]), tmp_path / "out")
    assert result.n_notes == 0 and any("no notes" in w for w in result.warnings)
    assert music21.converter.parse(result.path("musicxml")) is not None


def test_checkpoint_errors_stop_the_job_unchanged(chorale, transcriber, tmp_path):
    class TimeLimitExceeded(PipelineError):
        pass

    calls = []

    def checkpoint():
        calls.append(1)
        if len(calls) == 2:
            raise TimeLimitExceeded("soft time limit", stage="transcription", retryable=True)

    with pytest.raises(TimeLimitExceeded):
        Pipeline(config(tmp_path), transcriber=transcriber).run(
            str(chorale.path), tmp_path / "out", checkpoint=checkpoint
        )
    assert not list((tmp_path / "tmp").iterdir())


def test_progress_bands_are_the_job_designs():  # docs/architecture.md
    assert BANDS["download"][0] == 5 and BANDS["decode"][1] == 20
    assert BANDS["separation"] == (20, 50) and BANDS["transcription"] == (50, 90) and BANDS["musicxml"] == (90, 100)


def test_stem_choice_that_yields_nothing_is_a_permanent_error_and_mix_skips_separation(chorale, transcriber, tmp_path):
    separated = {"separation": {"model": "demucs_unittest"}}
    with pytest.raises(NonRetryableError, match="none of the requested stems") as info:
        Pipeline(config(tmp_path, transcription={"stems": ["piano"]}, **separated), transcriber=transcriber).run(
            str(chorale.path), tmp_path / "out"
        )
    assert info.value.stage == "transcription"
    # asking for the mix needs no separation: the model is not even loaded
    pipeline = Pipeline(config(tmp_path, **separated), transcriber=transcriber)
    result = pipeline.run(str(chorale.path), tmp_path / "mix")
    assert result.stems == ["mix"] and result.n_notes > 50 and pipeline._separator is None


def test_notation_warm_up_writes_a_score_and_never_raises(monkeypatch, caplog, tmp_path):
    """The warm-up runs the real writer on a synthetic song and leaves nothing behind; a
    failure is logged, not raised, so a worker whose warm-up breaks still takes jobs."""
    import tempfile

    from rescored_ray import notation

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    written: list[str] = []
    real = notation.write_musicxml
    monkeypatch.setattr(notation, "write_musicxml", lambda score, path: (written.append(str(path)), real(score, path)))
    assert Pipeline().warm_up_notation() > 0
    assert written and "rescored_warmup_" in written[0]
    assert not list(tmp_path.glob("rescored_warmup_*"))  # it notated, then removed its folder

    def broken(*args, **kwargs):
        raise OSError("no space left on device")

    monkeypatch.setattr(notation, "notate", broken)
    with caplog.at_level("WARNING", logger="rescored_ray.pipeline"):
        assert Pipeline().warm_up_notation() > 0
    assert "notation warm-up failed" in caplog.text
