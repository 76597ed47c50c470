"""Where audio comes from: URL checks, metadata probes, downloads and playlists (yt-dlp).

Every source is classified before anything is fetched: YouTube links in all their
common forms are reduced to one canonical watch URL (so duplicates can be spotted),
other http(s) URLs go to yt-dlp's extractors (its generic one handles direct media
links and RSS feeds), local files are read in place. The probe refuses what can
never work (too long, private, age-restricted, removed, a playlist where one item
is expected) as :class:`NonRetryableError`; network trouble is :class:`RetryableError`.
"""

from __future__ import annotations

import logging
import os
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rescored_ray.config import SourceConfig
from rescored_ray.errors import NonRetryableError, PipelineError, RetryableError

log = logging.getLogger(__name__)

STAGE = "download"
YOUTUBE_HOSTS = {
    "youtube.com",
    "www.youtube.com",
    "m.youtube.com",
    "music.youtube.com",
    "youtube-nocookie.com",
    "www.youtube-nocookie.com",
}
YOUTUBE_SHORT_HOSTS = {"youtu.be", "www.youtu.be"}
VIDEO_ID = re.compile(r"^[A-Za-z0-9_-]{11}$")
PLAYLIST_ID = re.compile(r"^[A-Za-z0-9_-]{2,64}$")
PATH_ID_PREFIXES = ("shorts", "embed", "v", "live", "e")

DownloadProgress = Callable[[float], None]
"""Called with the downloaded fraction (0..1) when the size is known."""


@dataclass(frozen=True)
class Source:
    """A classified, normalised source. ``key`` is stable across spellings of the same thing."""

    kind: str  # "youtube" | "youtube_playlist" | "url" | "local"
    location: str  # canonical URL, or absolute local path
    id: str | None = None

    @property
    def key(self) -> str:
        if self.kind == "youtube":
            return f"youtube:{self.id}"
        if self.kind == "youtube_playlist":
            return f"youtube-playlist:{self.id}"
        return f"{self.kind}:{self.location}"

    @property
    def is_remote(self) -> bool:
        return self.kind != "local"


@dataclass
class FetchedAudio:
    """A downloaded (or local) file plus what the probe learned about it."""

    path: Path
    source: Source
    title: str | None = None
    duration_s: float | None = None
    info: dict[str, Any] = field(default_factory=dict[str, Any], repr=False)
    artist: str | None = None
    """Who made it, as far as the source says (artist tag, else the uploader or channel)."""


@dataclass(frozen=True)
class PlaylistEntry:
    """One item of an expanded playlist; nothing has been downloaded yet."""

    index: int
    id: str
    url: str
    title: str | None = None
    duration_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "id": self.id, "url": self.url, "title": self.title, "duration_s": self.duration_s}


# -- classification -----------------------------------------------------------------------------


def parse_source(source: str, config: SourceConfig | None = None) -> Source:
    """Classify and normalise a user-supplied source, or refuse it with a clear message."""
    config = config or SourceConfig()
    if not isinstance(source, str) or not source.strip():
        raise NonRetryableError("source is empty: give a URL or a local file path", stage="source")
    text = source.strip()
    if len(text) > 4096:
        raise NonRetryableError("source is longer than 4096 characters", stage="source")
    parsed = urllib.parse.urlsplit(text)
    scheme = parsed.scheme.lower()
    if scheme in ("http", "https"):
        if not parsed.hostname:
            raise NonRetryableError(f"URL has no host: {text!r}", stage="source")
        youtube = _parse_youtube(parsed)
        if youtube is not None:
            return youtube
        return Source(
            "url", urllib.parse.urlunsplit((scheme, parsed.netloc.lower(), parsed.path or "/", parsed.query, ""))
        )
    if scheme and len(scheme) > 1:  # "C:" style drive letters are paths, anything else is a scheme
        raise NonRetryableError(
            f"unsupported source {text[:80]!r}: only http(s) URLs and local files are accepted", stage="source"
        )
    path = Path(text).expanduser()
    if not config.allow_local_files:
        raise NonRetryableError("local files are not accepted by this service: give an http(s) URL", stage="source")
    if not path.exists():
        raise NonRetryableError(f"{text[:200]!r} is neither an http(s) URL nor an existing local file", stage="source")
    if not path.is_file():
        raise NonRetryableError(f"{text[:200]!r} is not a regular file", stage="source")
    return Source("local", str(path.resolve()))


def _parse_youtube(parsed: urllib.parse.SplitResult) -> Source | None:
    host = (parsed.hostname or "").lower()
    query = urllib.parse.parse_qs(parsed.query)
    video_id: str | None = None
    if host in YOUTUBE_SHORT_HOSTS:
        video_id = parsed.path.strip("/").split("/")[0]
    elif host in YOUTUBE_HOSTS:
        parts = [p for p in parsed.path.split("/") if p]
        if parts[:1] == ["watch"]:
            video_id = (query.get("v") or [""])[0]
        elif len(parts) >= 2 and parts[0] in PATH_ID_PREFIXES:
            video_id = parts[1]
        elif parts[:1] == ["playlist"]:
            playlist_id = (query.get("list") or [""])[0]
            if not PLAYLIST_ID.match(playlist_id):
                raise NonRetryableError("YouTube playlist URL without a valid list= id", stage="source")
            return Source("youtube_playlist", f"https://www.youtube.com/playlist?list={playlist_id}", playlist_id)
        else:
            return None  # channels, search pages...: let yt-dlp decide
    else:
        return None
    if not video_id or not VIDEO_ID.match(video_id):
        raise NonRetryableError(f"not a valid YouTube video id: {video_id!r}", stage="source")
    return Source("youtube", f"https://www.youtube.com/watch?v={video_id}", video_id)


# -- yt-dlp -------------------------------------------------------------------------------------


class _YtdlpLogger:
    """Routes yt-dlp's messages to logging and remembers errors for classification."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self.messages: list[str] = []  # yt-dlp reports some refusals (max-filesize) only as info

    def debug(self, message: str) -> None:
        if message.startswith("[debug] "):
            return
        self.info(message)

    def info(self, message: str) -> None:
        self.messages = [*self.messages[-50:], message]
        log.debug("yt-dlp: %s", message)

    def warning(self, message: str) -> None:
        self.warnings.append(message)
        log.info("yt-dlp warning: %s", message)

    def error(self, message: str) -> None:
        self.errors.append(message)
        log.info("yt-dlp error: %s", message)


def ytdlp_options(config: SourceConfig, workdir: Path | None = None, **extra: Any) -> dict[str, Any]:
    """yt-dlp options locked down for a server: no config files, no post-processors that
    shell out, no cookies, bounded sizes and timeouts."""
    options: dict[str, Any] = {
        "ignoreconfig": True,
        "quiet": True,
        "no_warnings": False,
        "noprogress": True,
        "noplaylist": True,
        "format": "bestaudio/best",
        "postprocessors": [],
        "socket_timeout": config.socket_timeout_s,
        "max_filesize": config.max_download_bytes,
        "retries": 2,
        "fragment_retries": 2,
        "extractor_retries": 1,
        "cachedir": False,
        "restrictfilenames": True,
        "windowsfilenames": True,
        "overwrites": True,
        "updatetime": False,
        "writethumbnail": False,
        "writesubtitles": False,
        "writeinfojson": False,
        "check_formats": False,
        "logger": _YtdlpLogger(),
    }
    if workdir is not None:
        options["paths"] = {"home": str(workdir), "temp": str(workdir)}
        options["outtmpl"] = {"default": "%(id).60B.%(ext)s"}
    options.update(extra)
    return options


PERMANENT_PATTERNS = [
    (re.compile(r"private video|video is private", re.I), "the video is private"),
    (
        re.compile(r"confirm your age|age[- ]restricted|inappropriate for some users", re.I),
        "the video is age-restricted",
    ),
    (re.compile(r"members[- ]only|join this channel|premium", re.I), "the video needs a membership or subscription"),
    (
        re.compile(r"has been removed|no longer available|video unavailable|account .* terminated|copyright", re.I),
        "the video is unavailable or was removed",
    ),
    (re.compile(r"unsupported url", re.I), "no media found at this URL (unsupported page)"),
    (re.compile(r"HTTP Error (400|401|404|410|451)", re.I), "the server says the media does not exist ({0})"),
    (
        re.compile(r"requested format is not available|no (audio|video) formats found", re.I),
        "no audio stream is offered",
    ),
    (re.compile(r"is not a valid URL|invalid url", re.I), "the URL is not valid"),
    (re.compile(r"larger than max-filesize", re.I), "the file is larger than the download limit"),
    (re.compile(r"did not get any data blocks", re.I), "the server sent an empty file"),
    (re.compile(r"resolves to a non-public address", re.I), "the URL leads to a non-public address"),
]


def refuse_playlist(source: Source, stage: str) -> None:
    """One job takes one recording: a URL known to be a playlist is a permanent error.
    (Other playlists, RSS feeds, are only recognised by the probe.)"""
    if source.kind == "youtube_playlist":
        raise NonRetryableError(
            "this URL is a playlist: one job takes one recording; run playlists as a batch "
            "(rescored-ray batch, or Client.batch)",
            stage=stage,
        )


def classify_ytdlp_error(message: str) -> PipelineError:
    """Map a yt-dlp error message to a permanent or transient error with a clear reason."""
    text = re.sub(r"^ERROR:\s*", "", message.strip())
    for pattern, reason in PERMANENT_PATTERNS:
        match = pattern.search(text)
        if match:
            detail = reason.format(match.group(0))
            return NonRetryableError(f"{detail}: {_shorten(text)}", stage=STAGE)
    return RetryableError(f"download failed (will retry): {_shorten(text)}", stage=STAGE)


def _shorten(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_info(info: dict[str, Any], config: SourceConfig) -> None:
    """Refuse, before downloading, what the metadata already shows cannot be transcribed."""
    if info.get("_type") in ("playlist", "multi_video"):
        entries = info.get("entries")
        count = len(entries) if isinstance(entries, (list, tuple)) else 0
        raise NonRetryableError(
            f"this URL is a playlist ({count or 'several'} entries); submit it as a batch, or give a single item's URL",
            stage=STAGE,
        )
    duration = info.get("duration")
    if duration is not None and float(duration) > config.max_duration_s:
        raise NonRetryableError(
            f"the recording is {float(duration) / 60:.1f} min long, over the {config.max_duration_s / 60:.1f} min limit",
            stage=STAGE,
        )
    if (info.get("age_limit") or 0) >= 18:
        raise NonRetryableError("the video is age-restricted", stage=STAGE)
    availability = info.get("availability")
    if availability in ("private", "premium_only", "subscriber_only", "needs_auth"):
        raise NonRetryableError(f"the video is not publicly available ({availability})", stage=STAGE)
    if info.get("live_status") in ("is_live", "is_upcoming", "post_live"):
        raise NonRetryableError(f"live streams cannot be transcribed ({info['live_status']})", stage=STAGE)


def fetch(
    source: Source | str,
    workdir: str | os.PathLike[str],
    config: SourceConfig | None = None,
    progress: DownloadProgress | None = None,
) -> FetchedAudio:
    """Probe, check and download the best audio stream of ``source`` into ``workdir``.

    Local files are returned in place (nothing to download).
    """
    config = config or SourceConfig()
    if isinstance(source, str):
        source = parse_source(source, config)
    if source.kind == "local":
        path = Path(source.location)
        tags = _file_tags(path)
        return FetchedAudio(path=path, source=source, title=tags.get("title") or path.stem, artist=tags.get("artist"))
    refuse_playlist(source, STAGE)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    hooks = [_progress_hook(progress)] if progress else []
    import yt_dlp

    options = ytdlp_options(config, workdir, progress_hooks=hooks)
    logger: _YtdlpLogger = options["logger"]
    with yt_dlp.YoutubeDL(options) as ydl:
        # Probe without resolving anything further: a playlist is refused here, before any
        # of its entries is fetched; a single item is then resolved and downloaded.
        info = _call_ytdlp(lambda: ydl.extract_info(source.location, download=False, process=False), logger)
        check_info(info, config)
        info = _call_ytdlp(lambda: ydl.process_ie_result(info, download=True), logger)
        check_info(info, config)
    path = _downloaded_file(info, workdir, logger)
    return FetchedAudio(
        path=path,
        source=source,
        title=info.get("title"),
        duration_s=float(info["duration"]) if info.get("duration") else None,
        info=_public_info(info),
        artist=_first_text(info, ("artist", "creator", "uploader", "channel")),
    )


def _first_text(mapping: Mapping[str, Any], keys: tuple[str, ...]) -> str | None:
    for k in keys:
        value = mapping.get(k)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _file_tags(path: Path) -> dict[str, str]:
    """Title and artist tags of a local file (lower-case keys); empty when it has none or
    cannot be read here (decoding reports unreadable files properly)."""
    import av

    try:
        with av.open(str(path)) as container:
            tags = {k.lower(): v for k, v in container.metadata.items()}
            for stream in container.streams.audio[:1]:
                tags = {**{k.lower(): v for k, v in stream.metadata.items()}, **tags}
    except Exception:
        return {}
    return {k: v for k in ("title", "artist") if (v := _first_text(tags, (k,)))}


def expand_playlist(url: str, config: SourceConfig | None = None, max_entries: int = 5000) -> list[PlaylistEntry]:
    """List a playlist's entries (YouTube playlist, RSS feed, any yt-dlp playlist) without
    downloading them. A single-item URL expands to one entry."""
    config = config or SourceConfig()
    source = parse_source(url, config)
    if source.kind == "local":
        return [PlaylistEntry(0, Path(source.location).stem, source.location, Path(source.location).stem)]
    import yt_dlp

    options = ytdlp_options(config, extract_flat="in_playlist", noplaylist=False, playlistend=max_entries)
    options.pop("format")
    logger: _YtdlpLogger = options["logger"]
    with yt_dlp.YoutubeDL(options) as ydl:
        info = _call_ytdlp(lambda: ydl.extract_info(source.location, download=False, process=True), logger)
    if info.get("_type") not in ("playlist", "multi_video"):
        return [
            PlaylistEntry(
                0,
                str(info.get("id") or source.key),
                info.get("webpage_url") or source.location,
                info.get("title"),
                _float_or_none(info.get("duration")),
            )
        ]
    entries: list[PlaylistEntry] = []
    for index, entry in enumerate(info.get("entries") or []):
        if not entry:
            continue
        entry_url = entry.get("url") or entry.get("webpage_url")
        if not entry_url:
            continue
        entry_url, _ = yt_dlp.utils.unsmuggle_url(entry_url)  # drop yt-dlp's private #__youtubedl_smuggle
        entry_id = str(entry.get("id") or f"{info.get('id', 'entry')}-{index}")
        entries.append(
            PlaylistEntry(index, entry_id, entry_url, entry.get("title"), _float_or_none(entry.get("duration")))
        )
    return entries


def _float_or_none(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _call_ytdlp(call: Callable[[], Any], logger: _YtdlpLogger) -> Any:
    import yt_dlp

    try:
        result = call()
    except yt_dlp.utils.DownloadError as exc:
        raise classify_ytdlp_error(str(exc)) from exc
    except (yt_dlp.utils.ExtractorError, yt_dlp.utils.UnsupportedError) as exc:
        raise classify_ytdlp_error(str(exc)) from exc
    except OSError as exc:
        raise RetryableError(f"download failed (will retry): {exc}", stage=STAGE) from exc
    if result is None:
        raise classify_ytdlp_error(logger.errors[-1] if logger.errors else "yt-dlp returned nothing")
    return result


def _progress_hook(progress: DownloadProgress) -> Callable[[dict[str, Any]], None]:
    def hook(status: dict[str, Any]) -> None:
        if status.get("status") == "finished":
            progress(1.0)
            return
        total = status.get("total_bytes") or status.get("total_bytes_estimate")
        done = status.get("downloaded_bytes")
        if total and done is not None:
            progress(max(0.0, min(1.0, done / total)))

    return hook


def _downloaded_file(info: dict[str, Any], workdir: Path, logger: _YtdlpLogger) -> Path:
    for item in info.get("requested_downloads") or []:
        path = item.get("filepath")
        if path and Path(path).is_file():
            return Path(path)
    files = [p for p in workdir.iterdir() if p.is_file() and not p.name.endswith((".part", ".ytdl"))]
    if files:
        return max(files, key=lambda p: p.stat().st_size)
    reason = " ".join(logger.errors + logger.warnings + logger.messages[-3:]) or "yt-dlp produced no file"
    if re.search(r"max-filesize", reason, re.I):
        raise NonRetryableError("the file is larger than the download limit", stage=STAGE)
    raise RetryableError(f"download produced no file: {_shorten(reason)}", stage=STAGE)


def _public_info(info: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "id",
        "title",
        "duration",
        "uploader",
        "artist",
        "creator",
        "channel",
        "webpage_url",
        "extractor",
        "ext",
        "acodec",
        "abr",
        "filesize",
    )
    return {key: info.get(key) for key in keys if info.get(key) is not None}
