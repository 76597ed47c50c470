"""What a finished job leaves behind: one table of its output files.

Each row names a kind of output, the file it is written to inside the job's folder,
its media type, and the route that serves it under ``/api/v1/scores/{job_id}``. A kind
whose file name holds ``{name}`` has one file per name (one FLAC per stem, one SVG per
page). Everything else derives from this table: the service's download routes, the
SDK's URLs, ``Score.save``, the batch manifest's columns. Adding an output means
adding its row here and writing the file; nothing else changes.

A job's ``outputs`` (in ``result.json``, the job record and the SDK's result) has one
shape everywhere: the sorted list of files it wrote, relative to its folder
(``["notes.csv", "score.musicxml", "stems/bass.flac", ...]``). Where they live is said
once beside it (``output_dir``, the results store's ``<job_id>/`` prefix).

No third-party imports: the SDK uses this module too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

NAME = "{name}"
NAME_PATTERN = re.compile(r"^[a-z0-9_-]{1,32}$")
"""What a ``{name}`` may be: a stem or a page number, never a path."""


@dataclass(frozen=True)
class Output:
    """One kind of output file."""

    kind: str
    file: str
    """Path inside the job's folder; ``{name}`` in it makes the kind multi-file."""
    media_type: str
    route: str | None
    """Path under ``/api/v1/scores/{job_id}`` that serves it (``""``: the score itself);
    None: not served (``result.json``: the job's status already carries it)."""
    download: str
    """File name offered to browsers; ``{job_id}`` and ``{name}`` are filled in."""

    @property
    def multi(self) -> bool:
        return NAME in self.file

    def file_for(self, name: str | None = None) -> str:
        """The file of this kind (of ``name``, for a multi-file kind)."""
        if self.multi:
            if name is None or not NAME_PATTERN.match(name):
                raise ValueError(f"{self.kind} needs a name matching {NAME_PATTERN.pattern}, not {name!r}")
            return self.file.replace(NAME, name)
        return self.file

    def name_of(self, file: str) -> str | None:
        """The ``{name}`` of ``file`` if ``file`` is of this kind (``""`` for a single-file kind), else None."""
        if not self.multi:
            return "" if file == self.file else None
        head, tail = self.file.split(NAME)
        if file.startswith(head) and file.endswith(tail):
            name = file[len(head) : len(file) - len(tail)]
            if NAME_PATTERN.match(name):
                return name
        return None


LAYOUT: tuple[Output, ...] = (
    Output("musicxml", "score.musicxml", "application/vnd.recordare.musicxml+xml", "", "{job_id}.musicxml"),
    Output("midi", "score.mid", "audio/midi", "midi", "{job_id}.mid"),
    Output("notes", "notes.csv", "text/csv", "notes", "{job_id}-notes.csv"),
    Output("pdf", "score.pdf", "application/pdf", "pdf", "{job_id}.pdf"),
    Output("pages", "pages/page-{name}.svg", "image/svg+xml", "pages/{name}", "{job_id}-page-{name}.svg"),
    Output("preview", "preview.svg", "image/svg+xml", "preview", "{job_id}.svg"),
    Output("stems", "stems/{name}.flac", "audio/flac", "stems/{name}", "{job_id}-{name}.flac"),
    Output("result", "result.json", "application/json", None, "{job_id}.json"),
)


def listed(outputs: Iterable[str] | Mapping[str, str] | None) -> list[str]:
    """A job's ``outputs`` as the list of its files; a job recorded by release 0.1 mapped each
    file name to its store key, and its files are served too."""
    return sorted(outputs or [])


def output(kind: str) -> Output:
    """The row of ``kind`` (KeyError names the kinds there are)."""
    for row in LAYOUT:
        if row.kind == kind:
            return row
    raise KeyError(f"no output kind {kind!r}; there are {', '.join(row.kind for row in LAYOUT)}")


def file(kind: str, name: str | None = None) -> str:
    """The file of ``kind`` inside a job's folder, e.g. ``file("stems", "bass")``."""
    return output(kind).file_for(name)


def kind_of(path: str) -> tuple[Output, str] | None:
    """``(row, name)`` of a file inside a job's folder, or None if the layout has no such file."""
    for row in LAYOUT:
        name = row.name_of(path)
        if name is not None:
            return row, name
    return None


def files_of(kind: str, outputs: Iterable[str]) -> dict[str, str]:
    """The files of ``kind`` among ``outputs``: name -> file (the name is ``""`` for a single-file kind)."""
    row = output(kind)
    found = {}
    for path in outputs:
        name = row.name_of(path)
        if name is not None:
            found[name] = path
    return dict(sorted(found.items()))


def route_of(path: str) -> str:
    """The route (under ``/api/v1/scores/{job_id}``) that serves ``path``; KeyError if none does."""
    found = kind_of(path)
    if found is None or found[0].route is None:
        raise KeyError(f"the service does not serve {path!r}")
    row, name = found
    route = (row.route or "").replace(NAME, name)
    return f"/{route}" if route else ""


def resolve(route: str, name: str | None = None) -> tuple[Output, str] | None:
    """The inverse of :func:`route_of`: ``(row, file)`` served at ``route`` (``"midi"``; ``"stems"``
    with ``name="bass"``), or None when no output is served there. A multi-file kind with a
    bad or missing ``name`` raises ValueError (a request to refuse, not a file to look for)."""
    for row in LAYOUT:
        if row.route is None or row.route.split("/")[0] != route.strip("/"):
            continue
        if row.multi:
            return row, row.file_for(name)
        return (row, row.file) if name is None else None
    return None
