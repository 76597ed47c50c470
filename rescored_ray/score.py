"""A finished transcription as a notebook-friendly object.

``Score`` is what the SDK hands back, whether the job ran in the service, in a batch,
or in this process: the MusicXML text, the MIDI bytes, the PDF and page pictures, the
stems, the cleaned notes as a table, key, meter and tempo. A notebook cell that ends in a
Score shows every page of the sheet music (verovio SVG); files are fetched lazily, so a
Score of a remote job costs one request until you ask for its files.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

from rescored_ray import layout, outputs

Fetch = Callable[[str], bytes]
"""Returns the bytes of one output file by its name in the job folder (``score.mid``, ``stems/bass.flac``)."""


class Score:
    """Scores and data of one transcription; files load on first use."""

    def __init__(self, result: Mapping[str, Any], fetch: Fetch, *, job_id: str | None = None):
        self.result = dict(result)
        self.job_id = job_id or self.result.get("job_id")
        self._fetch = fetch
        self._cache: dict[str, bytes] = {}

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_dir(cls, folder: str | Path) -> Score:
        """A Score of an output folder (``rescored-ray transcribe`` / a batch entry / ``save``)."""
        folder = Path(folder)
        result_file = folder / layout.file("result")
        result = json.loads(result_file.read_text()) if result_file.is_file() else {}
        return cls(result, lambda name: (folder / name).read_bytes())

    @staticmethod
    def served(result: Mapping[str, Any]) -> list[str]:
        """The files of a job's ``outputs`` that the service serves (all but ``result.json``)."""
        return [
            name
            for name in layout.listed(result.get("outputs"))
            if (found := layout.kind_of(name)) is not None and found[0].route is not None
        ]

    # -- data ---------------------------------------------------------------------------------
    @property
    def outputs(self) -> list[str]:
        """The files the job wrote (see :mod:`rescored_ray.layout`)."""
        return layout.listed(self.result.get("outputs"))

    def file(self, name: str) -> bytes:
        """One output file by its name in the job's folder (``score.mid``, ``stems/bass.flac``)."""
        if name not in self._cache:
            self._cache[name] = self._fetch(name)
        return self._cache[name]

    def output(self, kind: str, name: str | None = None) -> bytes:
        """The file of ``kind`` (``output("stems", "bass")``)."""
        return self.file(layout.file(kind, name))

    @property
    def musicxml(self) -> str:
        return self.output("musicxml").decode("utf-8")

    @property
    def midi(self) -> bytes:
        return self.output("midi")

    @property
    def stem_names(self) -> list[str]:
        """Stems written as audio (none when the mix was transcribed without separation)."""
        return list(layout.files_of("stems", self.outputs))

    @property
    def stems(self) -> dict[str, bytes]:
        """FLAC bytes of each separated stem."""
        return {name: self.file(path) for name, path in layout.files_of("stems", self.outputs).items()}

    @property
    def notes(self) -> pd.DataFrame:
        """The cleaned notes behind the score (seconds of the recording): a pandas DataFrame with
        stem, pitch, start_s, end_s, velocity, amplitude."""
        import pandas as pd

        rows = list(csv.DictReader(io.StringIO(self.output("notes").decode("utf-8"))))
        frame = pd.DataFrame(rows, columns=list(outputs.NOTES_CSV_COLUMNS))
        return frame.astype(
            {"pitch": "int16", "start_s": "float64", "end_s": "float64", "velocity": "int16", "amplitude": "float32"}
        )

    @property
    def pdf(self) -> bytes:
        """All pages in one PDF."""
        return self.output("pdf")

    @property
    def pages(self) -> list[str]:
        """Every page of the sheet music as SVG, in order: the job's own pictures, else rendered
        here with verovio (the ``pipeline`` extra)."""
        written = layout.files_of("pages", self.outputs)
        if written:
            return [self.file(written[n]).decode("utf-8") for n in sorted(written, key=int)]
        from rescored_ray.notation import render_pages

        return render_pages(self.musicxml)

    @property
    def key(self) -> str | None:
        return self.result.get("key")

    @property
    def tempo(self) -> float | None:
        return self.result.get("tempo_bpm")

    @property
    def time_signature(self) -> str | None:
        return self.result.get("time_signature")

    @property
    def pickup(self) -> float:
        """Length of the anacrusis in quarter notes (0: the score starts on a downbeat)."""
        return float(self.result.get("pickup_ql") or 0.0)

    @property
    def title(self) -> str | None:
        return self.result.get("title")

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write every output file (score, MIDI, notes, stems, ...) and result.json into ``folder``."""
        folder = Path(folder)
        for name in self.served(self.result):
            outputs.write_bytes(folder / name, self.file(name))
        outputs.write_json(folder / layout.file("result"), self.result)
        return folder

    # -- display ------------------------------------------------------------------------------
    def svg(self, page: int = 1) -> str:
        """One page (1-based) of the sheet music as SVG."""
        written = layout.files_of("pages", self.outputs)
        if str(page) in written:
            return self.file(written[str(page)]).decode("utf-8")
        preview = layout.file("preview")
        if page == 1 and preview in self.outputs:
            return self.file(preview).decode("utf-8")
        from rescored_ray.notation import render_svg

        return render_svg(self.musicxml, page=page)

    def _repr_html_(self) -> str:
        caption = " · ".join(
            str(part)
            for part in (
                self.title,
                self.key,
                f"{self.tempo:g} bpm" if self.tempo else None,
                f"{self.result.get('n_notes')} notes" if self.result.get("n_notes") is not None else None,
            )
            if part
        )
        pages = "".join(f"<div style='margin-bottom:1em'>{svg}</div>" for svg in self.pages)
        return f"<figure style='margin:0'>{pages}<figcaption>{caption}</figcaption></figure>"

    def __repr__(self) -> str:
        return (
            f"Score(job_id={self.job_id!r}, key={self.key!r}, tempo={self.tempo!r}, "
            f"n_notes={self.result.get('n_notes')!r}, stems={self.stem_names!r})"
        )
