"""Sanity checks for the generated test media, the HTTP server and the RSS feed."""

from __future__ import annotations

import http.client
import struct
import wave
from pathlib import Path

import mido
import numpy as np
import pytest

from tests.media import (
    FORMATS,
    SAMPLE_RATE,
    available_encoders,
    decode_info,
    find_soundfont,
    has_xing_header,
    load_score,
    prepare_score,
    read_truth_csv,
    read_wav,
    render_chorale,
    render_score,
)

YDL_BASE = {"ignoreconfig": True, "quiet": True, "no_warnings": True, "noprogress": True, "proxy": ""}


def _midi_note_count(path: Path) -> int:
    """Independent of pretty_midi: count note-ons (velocity > 0) off channel 10."""
    mid = mido.MidiFile(str(path))
    return sum(1 for tr in mid.tracks for m in tr if m.type == "note_on" and m.velocity > 0 and m.channel != 9)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def _request(server, method: str, path: str, headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


# ---------------------------------------------------------------------------
# tools and rendering
# ---------------------------------------------------------------------------


def test_tools_available():
    assert find_soundfont().is_file()
    enc = available_encoders()
    missing = [k for k, ok in enc.items() if not ok]
    assert not missing, f"PyAV lacks encoders/containers for: {missing}"


def test_chorale_wav_format(chorale):
    with wave.open(str(chorale.path)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (SAMPLE_RATE, 2, 2)
        assert w.getnframes() / w.getframerate() == pytest.approx(chorale.duration_s, abs=1e-6)


def test_chorale_ground_truth(chorale):
    iv, p = chorale.intervals, chorale.pitches
    assert iv.shape == (chorale.n_notes, 2) and p.shape == (chorale.n_notes,)
    assert chorale.n_notes == _midi_note_count(chorale.midi_path) == 154
    assert np.all(iv[:, 1] > iv[:, 0])
    assert np.all(np.diff(iv[:, 0]) >= 0), "sorted by onset"
    assert p.min() >= 36 and p.max() <= 84
    assert set(chorale.programs) == {"Soprano", "Alto", "Tenor", "Bass"}
    assert set(chorale.programs.values()) == {0}
    # the whole score is there: starts at the lead-in, ends tail_s before the file ends
    assert chorale.first_onset_s == pytest.approx(chorale.lead_in_s, abs=1e-5)
    assert chorale.duration_s == pytest.approx(chorale.last_offset_s + 0.5, abs=1e-3)
    # 36 quarter notes at 90 bpm
    assert chorale.last_offset_s - chorale.first_onset_s == pytest.approx(36 * 60 / 90, abs=1e-3)
    # onsets lie on a sixteenth-note grid of the stated tempo
    grid = (iv[:, 0] - chorale.lead_in_s) / (chorale.seconds_per_beat / 4)
    assert np.allclose(grid, np.round(grid), atol=1e-3)
    # no two notes of the same pitch overlap (unisons merged before rendering)
    for pitch in np.unique(p):
        sub = iv[p == pitch]
        assert np.all(sub[1:, 0] >= sub[:-1, 1] - 1e-6), pitch
    by_inst = chorale.notes_by_instrument
    assert sum(len(v) for v in by_inst.values()) == chorale.n_notes
    assert by_inst["Bass"][:, 2].mean() < by_inst["Soprano"][:, 2].mean()


def test_chorale_audio_matches_truth(chorale):
    x, sr = read_wav(chorale.path)
    y = x.mean(axis=1)
    assert _rms(y) > 0.05
    assert np.abs(x).max() <= 1.0
    first = int(chorale.first_onset_s * sr)
    assert _rms(y[: first - int(0.01 * sr)]) < 1e-4, "silence before the first note"
    peak = np.abs(y).max()
    audible = np.nonzero(np.abs(y) > peak * 10 ** (-40 / 20))[0]
    assert audible[0] / sr == pytest.approx(chorale.first_onset_s, abs=0.03)
    # sound continues to the last note-off, then decays in the tail
    last = chorale.last_offset_s
    assert _rms(y[int((last - 0.5) * sr) : int(last * sr)]) > 0.01
    assert _rms(y[-int(0.02 * sr) :]) < _rms(y[int((last - 0.5) * sr) : int(last * sr)]) / 10
    # loudness follows the note density: the busiest second is louder than the tail
    assert _rms(y[int(last * sr) :]) < _rms(y)


def test_render_is_deterministic_and_truncates(tmp_path):
    a = render_chorale(tmp_path / "a", "bach/bwv66.6", tempo_bpm=120, max_seconds=6.0)
    b = render_chorale(tmp_path / "b", "bach/bwv66.6", tempo_bpm=120, max_seconds=6.0)
    assert a.path.read_bytes() == b.path.read_bytes()
    assert np.array_equal(a.intervals, b.intervals) and np.array_equal(a.pitches, b.pitches)
    assert a.duration_s <= 6.0
    assert a.last_offset_s <= 6.0 - 0.5 + 1e-6
    assert a.n_notes == _midi_note_count(a.midi_path) > 10
    # cut on a barline: pickup (1 beat) + whole 4/4 bars
    beats = (a.last_offset_s - a.lead_in_s) / a.seconds_per_beat
    assert (beats - a.pickup_beats) % 4 == pytest.approx(0, abs=1e-3)


def test_score_render_with_repeats_pickup_and_drift(tmp_path):
    """bwv269 (3/4, one-beat pickup, repeat): expanded, the bar split by the repeat joined
    again, a ramp 92 -> 100 bpm per bar, the notes on that tempo map."""
    truth, tempo_map = prepare_score(load_score("bach/bwv269"), tempo=(92, 100), max_seconds=20.0)
    bars = list(truth.parts[0].getElementsByClass("Measure"))
    assert bars[0].number == 0 and bars[0].showNumber == "never" and bars[0].duration.quarterLength == 1
    assert all(b.duration.quarterLength == 3 for b in bars[1:])  # no 2 + 1 split at the repeat
    assert [b.number for b in bars] == list(range(len(bars)))
    assert tempo_map.changes[0] == (0.0, 92.0) and tempo_map.changes[-1][1] == 100.0
    assert len(truth.parts[0].recurse().getElementsByClass("MetronomeMark")) == len(tempo_map.changes)
    assert not truth.recurse().getElementsByClass("Fermata")

    piece = render_score(tmp_path, truth, tempo_map, name="bwv269", source="bach/bwv269")
    assert piece.duration_s <= 20.0 and piece.time_signature == "3/4" and piece.pickup_beats == 1
    assert piece.n_notes == _midi_note_count(piece.midi_path)
    # the first downbeat comes one beat at 92 bpm after the lead-in; the last bar is at 100 bpm
    downbeats = [float(b.offset) for b in bars]
    assert tempo_map.seconds(downbeats[1]) == pytest.approx(60 / 92)
    last_bar_s = tempo_map.seconds(downbeats[-1] + 3) - tempo_map.seconds(downbeats[-1])
    assert last_bar_s == pytest.approx(3 * 60 / 100)
    assert piece.onsets.min() == pytest.approx(piece.lead_in_s, abs=1e-3)
    assert piece.last_offset_s == pytest.approx(piece.lead_in_s + tempo_map.seconds(downbeats[-1] + 3), abs=2e-3)


def test_truth_csv_roundtrip(chorale, tmp_path):
    path = chorale.write_truth_csv(tmp_path / "truth.csv")
    assert path.read_text().splitlines()[0] == "onset_s,offset_s,pitch"
    iv, p = read_truth_csv(path)
    assert np.allclose(iv, chorale.intervals, atol=1e-6) and np.array_equal(p, chorale.pitches)


def test_band_mix(band_mix):
    m = band_mix
    assert 15.0 <= m.duration_s <= 20.0
    assert m.programs == {"Piano": 0, "Bass": 33}
    assert m.n_notes == _midi_note_count(m.midi_path)
    assert len(m.drum_hits) > 20 and set(np.unique(m.drum_hits[:, 1]).astype(int)) == {36, 38, 42}
    by = m.notes_by_instrument
    assert len(by["Piano"]) + len(by["Bass"]) == m.n_notes
    assert by["Bass"][:, 2].max() <= by["Piano"][:, 2].max()
    assert set(m.notes_by_program) == {0, 33}
    x, sr = read_wav(m.path)
    assert sr == SAMPLE_RATE and x.shape[1] == 2 and _rms(x) > 0.05


# ---------------------------------------------------------------------------
# encodings
# ---------------------------------------------------------------------------

EXPECTED = {  # fmt -> (codec, container name prefix, sample rate)
    "mp3": ("mp3", "mp3", 44100),
    "flac": ("flac", "flac", 44100),
    "ogg": ("vorbis", "ogg", 44100),
    "opus": ("opus", "ogg", 48000),
    "m4a": ("aac", "mov,mp4", 44100),
    "webm": ("opus", "matroska,webm", 48000),
}


@pytest.mark.parametrize("fmt", sorted(EXPECTED))
def test_encoded_chorale_decodes(fmt, chorale, chorale_encoded):
    path = chorale_encoded[fmt]
    assert path.suffix == FORMATS[fmt][2] and path.parent == chorale.path.parent
    info = decode_info(path)
    codec, container, rate = EXPECTED[fmt]
    assert info["codec"].startswith(codec)
    assert info["container"].startswith(container)
    assert (info["sample_rate"], info["channels"]) == (rate, 2)
    assert info["duration_s"] == pytest.approx(chorale.duration_s, abs=0.01)
    ref = decode_info(chorale.path)["rms"]
    assert info["rms"] == pytest.approx(ref, rel=0.1)
    if fmt != "flac":
        assert path.stat().st_size < chorale.path.stat().st_size / 4


def _decode_mono(path: Path, rate: int = SAMPLE_RATE) -> np.ndarray:
    import av

    out = []
    with av.open(str(path)) as c:
        rs = av.AudioResampler(format="flt", layout="mono", rate=rate)
        for frame in c.decode(audio=0):
            out += [f.to_ndarray()[0] for f in rs.resample(frame)]
        out += [f.to_ndarray()[0] for f in rs.resample(None)]
    return np.concatenate(out)


def _lag(ref: np.ndarray, y: np.ndarray, max_lag: int = 4096) -> int:
    """Samples by which y is delayed relative to ref (FFT cross-correlation)."""
    n = min(len(ref), len(y))
    a, b = ref[:n], y[:n]
    size = 1 << int(np.ceil(np.log2(2 * n)))
    cc = np.fft.irfft(np.fft.rfft(b, size) * np.conj(np.fft.rfft(a, size)), size)
    cc = np.concatenate([cc[-max_lag:], cc[: max_lag + 1]])
    return int(np.argmax(cc)) - max_lag


@pytest.mark.parametrize("fmt", sorted(EXPECTED))
def test_encoded_chorale_is_time_aligned(fmt, chorale, chorale_encoded):
    """Ground truth applies to the encoded files too: no codec delay left in."""
    ref = read_wav(chorale.path)[0].mean(axis=1)[: 6 * SAMPLE_RATE]
    y = _decode_mono(chorale_encoded[fmt])[: 6 * SAMPLE_RATE]
    assert abs(_lag(ref, y)) <= 2


def test_resampled_inputs_are_time_aligned(chorale, broken_inputs):
    ref = read_wav(chorale.path)[0].mean(axis=1)[: 6 * SAMPLE_RATE]
    for key in ("mono_8k", "hires_96k", "surround_6ch"):
        y = _decode_mono(broken_inputs[key])[: 6 * SAMPLE_RATE]
        assert abs(_lag(ref, y)) <= 2, key


# ---------------------------------------------------------------------------
# broken / edge inputs
# ---------------------------------------------------------------------------


def test_broken_inputs(broken_inputs, chorale, media_dir):
    b = broken_inputs
    assert all(p.parent == media_dir for p in b.values())

    ok, frames = has_xing_header(b["truncated_mp3"])
    assert ok and frames and frames * 1152 / 44100 == pytest.approx(chorale.duration_s, abs=0.1)
    info = decode_info(b["truncated_mp3"])
    assert 0.2 * chorale.duration_s < info["duration_s"] < 0.6 * chorale.duration_s

    raw = b["truncated_wav"].read_bytes()
    riff_size = struct.unpack("<I", raw[4:8])[0]
    assert riff_size + 8 > len(raw) * 2, "header still describes the full file"

    assert b"<audio" not in b["html"].read_bytes() and b["html"].suffix == ".html"
    assert b["empty"].stat().st_size == 0
    rnd = b["random"].read_bytes()
    assert len(rnd) == 65536 and b"\xff" not in rnd

    import av

    for key in ("empty", "random", "html"):
        with pytest.raises(av.error.FFmpegError):
            decode_info(b[key])

    s = decode_info(b["silent"])
    assert s["duration_s"] == pytest.approx(10.0) and s["rms"] == 0.0

    for key, rate, ch in (("mono_8k", 8000, 1), ("hires_96k", 96000, 2), ("surround_6ch", 44100, 6)):
        info = decode_info(b[key])
        assert (info["sample_rate"], info["channels"]) == (rate, ch), key
        assert info["duration_s"] == pytest.approx(chorale.duration_s, abs=0.01), key
        assert info["rms"] > 0.01, key

    with av.open(str(b["long"])) as c:
        assert c.duration / 1e6 >= 15 * 60, "duration is known before decoding"
    info = decode_info(b["long"])
    assert info["duration_s"] >= 15 * 60 and info["rms"] > 0.005
    assert b["long"].stat().st_size < 2_000_000


# ---------------------------------------------------------------------------
# HTTP server
# ---------------------------------------------------------------------------

CTYPES = {
    "mp3": "audio/mpeg",
    "flac": "audio/flac",
    "ogg": "audio/ogg",
    "opus": "audio/ogg",
    "m4a": "audio/mp4",
    "webm": "audio/webm",
}


@pytest.mark.parametrize("fmt", sorted(CTYPES))
def test_http_serves_identical_bytes(fmt, http_server, chorale_encoded):
    path = chorale_encoded[fmt]
    status, headers, body = _request(http_server, "GET", "/" + path.name)
    assert status == 200
    assert headers["content-type"] == CTYPES[fmt]
    assert int(headers["content-length"]) == path.stat().st_size
    assert body == path.read_bytes()


def test_http_head_and_ranges(http_server, chorale):
    data = chorale.path.read_bytes()
    name = "/" + chorale.path.name
    status, h, body = _request(http_server, "HEAD", name)
    assert (status, body) == (200, b"")
    assert h["content-type"] == "audio/wav" and int(h["content-length"]) == len(data)
    assert h["accept-ranges"] == "bytes"

    status, h, body = _request(http_server, "GET", name, {"Range": "bytes=100-199"})
    assert status == 206 and body == data[100:200]
    assert h["content-range"] == f"bytes 100-199/{len(data)}" and h["content-length"] == "100"

    status, h, body = _request(http_server, "GET", name, {"Range": f"bytes={len(data) - 10}-"})
    assert status == 206 and body == data[-10:]
    status, h, body = _request(http_server, "GET", name, {"Range": "bytes=-7"})
    assert status == 206 and body == data[-7:]
    status, h, body = _request(http_server, "GET", name, {"Range": f"bytes=0-{10 * len(data)}"})
    assert status == 206 and body == data
    status, h, _ = _request(http_server, "GET", name, {"Range": f"bytes={len(data)}-"})
    assert status == 416 and h["content-range"] == f"bytes */{len(data)}"


def test_http_routes(http_server, media_dir):
    assert _request(http_server, "GET", "/nope.mp3")[0] == 404
    assert _request(http_server, "GET", "/../../etc/passwd")[0] == 404
    assert _request(http_server, "GET", "/status/404/chorale.mp3")[0] == 404
    status, h, _ = _request(http_server, "GET", "/status/503/chorale.mp3")
    assert status == 503 and h["retry-after"] == "1"
    assert _request(http_server, "GET", "/flaky/2/chorale.mp3")[0] == 503
    assert _request(http_server, "GET", "/flaky/2/chorale.mp3")[0] == 503
    status, _, body = _request(http_server, "GET", "/flaky/2/chorale.mp3")
    assert status == 200 and body == (media_dir / "chorale.mp3").read_bytes()
    status, h, _ = _request(http_server, "GET", "/redirect/chorale.mp3")
    assert status == 302 and h["location"] == "/chorale.mp3"
    status, h, _ = _request(http_server, "GET", "/page.html")
    assert status == 200 and h["content-type"].startswith("text/html")
    assert http_server.url("a b.mp3") == http_server.base_url + "/a%20b.mp3"
    assert any(r.path == "/nope.mp3" and r.status == 404 for r in http_server.requests)


# ---------------------------------------------------------------------------
# yt-dlp against the server
# ---------------------------------------------------------------------------


def test_rss_feed_is_a_playlist(rss_feed, rss_feed_info):
    from yt_dlp import YoutubeDL
    from yt_dlp.utils import unsmuggle_url

    with YoutubeDL({**YDL_BASE, "extract_flat": "in_playlist"}) as ydl:
        info = ydl.extract_info(rss_feed, download=False)
    assert info["_type"] == "playlist" and info["id"] == rss_feed
    entries = list(info["entries"])
    items = rss_feed_info.items
    assert len(entries) == len(items) == 5
    assert [e["title"] for e in entries] == [it.title for it in items]
    for e, it in zip(entries, items, strict=False):
        url, data = unsmuggle_url(e["url"])
        assert url == it.url and data == {"force_videoid": it.guid}
        assert e["_type"] == "url_transparent"
        assert e["duration"] == pytest.approx(it.duration_s, abs=0.5)
    assert rss_feed_info.items[rss_feed_info.broken_index].piece is None
    assert len(rss_feed_info.good_items) == 4
    for it in rss_feed_info.good_items:
        assert 10.0 <= it.piece.duration_s <= 15.0 and it.piece.n_notes > 40


def test_ytdlp_direct_download(http_server, chorale_encoded, tmp_path):
    from yt_dlp import YoutubeDL

    src = chorale_encoded["mp3"]
    opts = {**YDL_BASE, "format": "bestaudio/best", "outtmpl": str(tmp_path / "%(id)s.%(ext)s")}
    with YoutubeDL(opts) as ydl:
        info = ydl.extract_info(http_server.url(src.name), download=True)
    assert (info["id"], info["ext"], info["extractor"]) == ("chorale", "mp3", "generic")
    out = Path(info["requested_downloads"][0]["filepath"])
    assert out == tmp_path / "chorale.mp3"
    assert out.read_bytes() == src.read_bytes()


# ---------------------------------------------------------------------------
# bundled example
# ---------------------------------------------------------------------------

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_bundled_example_matches_its_truth(tmp_path):
    mp3, truth = EXAMPLES / "chorale.mp3", EXAMPLES / "chorale.truth.csv"
    assert mp3.stat().st_size < 1_000_000
    iv, p = read_truth_csv(truth)
    info = decode_info(mp3)
    assert 15.0 <= info["duration_s"] <= 25.0 and info["rms"] > 0.05
    assert info["duration_s"] == pytest.approx(iv[:, 1].max() + 0.5, abs=0.01)
    # the truth is reproducible from the corpus with the generator's settings
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_example", EXAMPLES / "make_example.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    piece = render_chorale(tmp_path, mod.CORPUS, tempo_bpm=mod.TEMPO_BPM, program=mod.PROGRAM)
    assert np.allclose(piece.intervals, iv, atol=2e-6) and np.array_equal(piece.pitches, p)
