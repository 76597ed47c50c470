"""What a batch run transcribes: playlists, URLs, files of URLs and folders, as entries.

Every input becomes :class:`BatchEntry` rows (id, url, title, duration when known)
before anything is downloaded. Playlist URLs given on the command line are expanded
with yt-dlp (YouTube playlists, RSS feeds, anything yt-dlp lists); lines of a
text/CSV/Parquet file are taken as entries as they are (a 1,000-line file must not
cost 1,000 probes), except YouTube playlist URLs, which are expanded too. Entry ids
are safe as folder names and unique within the run; the same source given twice is
one entry.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from rescored_ray import source as sources
from rescored_ray.config import SourceConfig
from rescored_ray.errors import NonRetryableError, PipelineError

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = {
    ".mp3",
    ".wav",
    ".flac",
    ".ogg",
    ".oga",
    ".opus",
    ".m4a",
    ".aac",
    ".webm",
    ".mp4",
    ".mka",
    ".aif",
    ".aiff",
    ".wma",
}
URL_LIST_SUFFIXES = {".txt", ".list", ".csv", ".tsv", ".parquet"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class BatchEntry:
    """One recording to transcribe; ``id`` names its output folder."""

    id: str
    url: str
    title: str | None = None
    duration_s: float | None = None
    index: int = 0
    input: str = ""
    """The command-line input this entry came from (a playlist URL, a file, a folder)."""

    def to_row(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class InputFailure:
    """An input that could not even be listed (a playlist that is gone, an unreadable file)."""

    input: str
    error: PipelineError


def safe_id(raw: str, fallback: str) -> str:
    """A folder-safe id: ``[A-Za-z0-9._-]``, at most 80 characters, never empty or dotted."""
    cleaned = _UNSAFE.sub("_", raw or "").strip("._-")[:80]
    if not cleaned:
        cleaned = hashlib.sha1(fallback.encode()).hexdigest()[:12]
    if cleaned != raw:  # sanitising can merge distinct ids; a short hash keeps them apart
        cleaned = f"{cleaned[:67]}-{hashlib.sha1(raw.encode()).hexdigest()[:12]}"
    return cleaned


def expand_inputs(
    inputs: Iterable[str], config: SourceConfig | None = None, max_playlist_entries: int = 5000
) -> tuple[list[BatchEntry], list[InputFailure]]:
    """All entries of all ``inputs``, in order, each source once; plus inputs that failed."""
    config = config or SourceConfig()
    entries: list[BatchEntry] = []
    failures: list[InputFailure] = []
    seen_sources: set[str] = set()
    seen_ids: set[str] = set()
    for item in inputs:
        try:
            raw = list(_expand_one(item, config, max_playlist_entries))
        except PipelineError as exc:
            log.warning("cannot list %s: %s", item, exc)
            failures.append(InputFailure(item, exc))
            continue
        for entry in raw:
            key = _source_key(entry.url, config)
            if key in seen_sources:
                log.info("skipping %s: already in this run", entry.url)
                continue
            seen_sources.add(key)
            entry_id = entry.id
            if entry_id in seen_ids:  # e.g. two RSS feeds numbering their items alike
                entry_id = f"{entry_id[:67]}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"
            seen_ids.add(entry_id)
            entries.append(BatchEntry(entry_id, entry.url, entry.title, entry.duration_s, len(entries), item))
    return entries, failures


def _source_key(url: str, config: SourceConfig) -> str:
    try:
        return sources.parse_source(url, config).key
    except PipelineError:
        return url  # refused later, as a failed entry with the parser's message


def _expand_one(item: str, config: SourceConfig, max_entries: int) -> Iterable[BatchEntry]:
    text = item.strip()
    if "://" not in text:
        path = Path(text).expanduser()
        if path.is_dir():
            yield from _folder_entries(path, item)
            return
        if path.is_file() and path.suffix.lower() in URL_LIST_SUFFIXES:
            yield from _file_entries(path, item, config, max_entries)
            return
    yield from _url_entries(text, item, config, max_entries)


def _url_entries(url: str, item: str, config: SourceConfig, max_entries: int) -> Iterable[BatchEntry]:
    listed = sources.expand_playlist(url, config, max_entries=max_entries + 1)  # one more: is there more?
    if len(listed) > max_entries:
        listed = listed[:max_entries]
        log.warning(
            "%s: listing stopped at %d entries (batch.max_playlist_entries); later entries are not in this run",
            url,
            max_entries,
        )
    for entry in listed:
        yield BatchEntry(safe_id(entry.id, entry.url), entry.url, entry.title, entry.duration_s, entry.index, item)


def _folder_entries(folder: Path, item: str) -> Iterable[BatchEntry]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
    if not files:
        log.warning("no audio files (%s) under %s", ", ".join(sorted(AUDIO_EXTENSIONS)), folder)
    for index, path in enumerate(files):
        relative = path.relative_to(folder).with_suffix("").as_posix()
        yield BatchEntry(safe_id(relative, str(path)), str(path.resolve()), path.stem, None, index, item)


def _file_entries(path: Path, item: str, config: SourceConfig, max_entries: int) -> Iterable[BatchEntry]:
    rows = list(_read_url_file(path))
    for index, row in enumerate(rows):
        url = row["url"]
        try:
            is_playlist = sources.parse_source(url, config).kind == "youtube_playlist"
        except PipelineError:
            is_playlist = False
        if is_playlist:
            yield from _url_entries(url, item, config, max_entries)
            continue
        raw_id = row.get("id") or _id_from_url(url)
        duration = row.get("duration_s")
        yield BatchEntry(
            safe_id(str(raw_id), url),
            url,
            row.get("title") or None,
            float(duration) if duration not in (None, "") else None,
            index,
            item,
        )


def _read_url_file(path: Path) -> Iterable[dict]:
    """Rows with ``url`` (and optional ``id``, ``title``, ``duration_s``) from a URL list."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            if "url" not in table.column_names:
                raise _bad_file(path, f"no 'url' column (columns: {', '.join(table.column_names)})")
            yield from (row for row in table.to_pylist() if row.get("url"))
        elif suffix in (".csv", ".tsv"):
            with path.open(newline="", encoding="utf-8") as handle:
                reader = csv.DictReader(handle, delimiter="\t" if suffix == ".tsv" else ",")
                if "url" not in (reader.fieldnames or []):
                    raise _bad_file(path, f"no 'url' column in the header (got {reader.fieldnames})")
                yield from (
                    {k: (v or "").strip() for k, v in row.items() if k}
                    for row in reader
                    if (row.get("url") or "").strip()
                )
        else:
            for line in path.read_text(encoding="utf-8").splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    yield {"url": line}
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise _bad_file(path, str(exc)) from exc


def _bad_file(path: Path, why: str) -> PipelineError:
    return NonRetryableError(f"cannot read URL list {path}: {why}", stage="source")


def _id_from_url(url: str) -> str:
    """A readable id: the YouTube video id, else the last path segment without extension."""
    if "://" not in url:
        return Path(url).stem
    if "v=" in url:
        return url.split("v=", 1)[1].split("&", 1)[0]
    tail = url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    stem = tail.rsplit(".", 1)[0] if "." in tail else tail
    return stem or hashlib.sha1(url.encode()).hexdigest()[:12]
