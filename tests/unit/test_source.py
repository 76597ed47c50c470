"""Source stage: URL forms, error classification, and real yt-dlp downloads over loopback."""

from pathlib import Path

import pytest

from rescored_ray.config import SourceConfig
from rescored_ray.errors import NonRetryableError, RetryableError
from rescored_ray.source import check_info, classify_ytdlp_error, expand_playlist, fetch, parse_source

VIDEO = "dQw4w9WgXcQ"
CANONICAL = f"https://www.youtube.com/watch?v={VIDEO}"


@pytest.mark.parametrize(
    "url",
    [
        f"https://www.youtube.com/watch?v={VIDEO}",
        f"http://youtube.com/watch?v={VIDEO}&t=42s&feature=share",
        f"https://m.youtube.com/watch?feature=youtu.be&v={VIDEO}",
        f"https://music.youtube.com/watch?v={VIDEO}&list=RDAMVM{VIDEO}",
        f"https://youtu.be/{VIDEO}",
        f"https://youtu.be/{VIDEO}?si=Xyz123&t=10",
        f"https://www.youtube.com/shorts/{VIDEO}",
        f"https://www.youtube.com/embed/{VIDEO}?start=5",
        f"https://www.youtube-nocookie.com/embed/{VIDEO}",
        f"https://www.youtube.com/live/{VIDEO}?feature=share",
        f"  https://www.youtube.com/v/{VIDEO}  ",
    ],
)
def test_every_youtube_form_normalises_to_one_watch_url(url):
    source = parse_source(url)
    assert (source.kind, source.location, source.id) == ("youtube", CANONICAL, VIDEO)
    assert source.key == f"youtube:{VIDEO}"


def test_youtube_playlist_and_other_urls_and_local_files(tmp_path):
    playlist = parse_source("https://www.youtube.com/playlist?list=PLrAXtmErZgOeiKm4sgNOknGvNjby9efdf&si=x")
    assert playlist.kind == "youtube_playlist" and playlist.id == "PLrAXtmErZgOeiKm4sgNOknGvNjby9efdf"
    other = parse_source("HTTPS://Example.ORG/music/song.mp3?x=1#frag")
    assert (other.kind, other.location) == ("url", "https://example.org/music/song.mp3?x=1")
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"RIFF")
    local = parse_source(str(audio))
    assert local.kind == "local" and Path(local.location) == audio.resolve()


@pytest.mark.parametrize(
    "bad, words",
    [
        ("", "empty"),
        ("   ", "empty"),
        ("ftp://example.org/a.mp3", "only http(s)"),
        ("file:///etc/passwd", "only http(s)"),
        ("javascript:alert(1)", "only http(s)"),
        ("https://youtu.be/short", "not a valid YouTube video id"),
        ("https://www.youtube.com/watch?v=", "not a valid YouTube video id"),
        ("https://www.youtube.com/playlist", "list= id"),
        ("no/such/file.mp3", "neither an http(s) URL nor an existing local file"),
        ("http://", "no host"),
        ("https://example.org/" + "a" * 5000, "longer than"),
    ],
)
def test_invalid_sources_are_permanent_errors_that_say_why(bad, words):
    with pytest.raises(NonRetryableError, match=words.replace("(", r"\(").replace(")", r"\)")) as info:
        parse_source(bad)
    assert info.value.retryable is False and info.value.stage == "source"


def test_local_files_can_be_refused_by_config(tmp_path):
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"x")
    with pytest.raises(NonRetryableError, match="local files are not accepted"):
        parse_source(str(audio), SourceConfig(allow_local_files=False))


@pytest.mark.parametrize(
    "message, retryable, words",
    [
        ("ERROR: [youtube] abc: Private video. Sign in if you've been granted access", False, "private"),
        (
            "ERROR: [youtube] abc: Sign in to confirm your age. This video may be inappropriate for some users.",
            False,
            "age-restricted",
        ),
        ("ERROR: [youtube] abc: Video unavailable. This video has been removed by the uploader", False, "removed"),
        ("ERROR: Unsupported URL: https://example.org/", False, "no media"),
        ("ERROR: [generic] x: Unable to download webpage: HTTP Error 404: Not Found", False, "does not exist"),
        ("ERROR: [youtube] abc: Requested format is not available", False, "no audio"),
        ("ERROR: [generic] x: Unable to download webpage: HTTP Error 503: Service Unavailable", True, "will retry"),
        (
            "ERROR: [generic] x: Unable to download webpage: <urlopen error [Errno 111] Connection refused>",
            True,
            "will retry",
        ),
        ("ERROR: unable to download video data: The read operation timed out", True, "will retry"),
    ],
)
def test_ytdlp_errors_are_classified(message, retryable, words):
    error = classify_ytdlp_error(message)
    assert error.retryable is retryable
    assert isinstance(error, RetryableError if retryable else NonRetryableError)
    assert words in error.message and error.stage == "download"


@pytest.mark.parametrize(
    "info, words",
    [
        ({"_type": "playlist", "entries": [{}, {}]}, "playlist"),
        ({"duration": 16 * 60}, "over the 15.0 min limit"),
        ({"duration": 30, "age_limit": 18}, "age-restricted"),
        ({"duration": 30, "availability": "private"}, "not publicly available"),
        ({"duration": 30, "live_status": "is_live"}, "live streams"),
    ],
)
def test_probe_refuses_before_downloading(info, words):
    with pytest.raises(NonRetryableError, match=words):
        check_info(info, SourceConfig())
    check_info({"duration": 899, "age_limit": 0, "availability": "public"}, SourceConfig())


# -- real yt-dlp against the loopback server ------------------------------------------------------


def test_direct_media_url_downloads_into_the_job_dir(http_server, chorale_encoded, tmp_path):
    seen = []
    fetched = fetch(http_server.url("chorale.mp3"), tmp_path / "job", progress=seen.append)
    assert fetched.path.parent == tmp_path / "job"
    assert fetched.path.read_bytes() == chorale_encoded["mp3"].read_bytes()
    assert fetched.info["extractor"] == "generic"
    assert seen and seen[-1] == 1.0 and all(0.0 <= f <= 1.0 for f in seen)


@pytest.mark.parametrize(
    "path, error, words",
    [
        ("page.html", NonRetryableError, "no media found"),
        ("nothing-here.mp3", NonRetryableError, "does not exist"),
        ("status/503/song.mp3", RetryableError, "will retry"),
    ],
)
def test_http_failures_are_classified(http_server, tmp_path, path, error, words):
    with pytest.raises(error, match=words):
        fetch(http_server.url(path), tmp_path)


def test_unreachable_host_is_retryable(tmp_path):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(RetryableError, match="will retry"):
        fetch(f"http://127.0.0.1:{port}/song.mp3", tmp_path)


def test_download_over_the_size_limit_is_refused(http_server, tmp_path):
    with pytest.raises(NonRetryableError, match="larger than the download limit"):
        fetch(http_server.url("chorale.flac"), tmp_path, SourceConfig(max_download_bytes=10_000))
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_local_file_is_used_in_place(chorale, tmp_path):
    fetched = fetch(str(chorale.path), tmp_path)
    assert fetched.path == chorale.path.resolve() and not list(tmp_path.iterdir())


def test_rss_feed_expands_to_entries_without_downloading(rss_feed_info, http_server):
    http_server.clear_log()
    entries = expand_playlist(rss_feed_info.url)
    assert [e.url for e in entries] == [item.url for item in rss_feed_info.items]
    assert len({e.id for e in entries}) == len(entries)
    assert all(e.title for e in entries)
    fetched_paths = {r.path for r in http_server.requests}
    assert fetched_paths <= {"/feed.xml"}, f"expansion downloaded media: {fetched_paths}"


def test_playlist_where_one_item_is_expected_is_refused(rss_feed, tmp_path):
    with pytest.raises(NonRetryableError, match="playlist"):
        fetch(rss_feed, tmp_path)


def test_single_url_expands_to_itself(http_server):
    entries = expand_playlist(http_server.url("chorale.mp3"))
    assert len(entries) == 1 and entries[0].url == http_server.url("chorale.mp3")
