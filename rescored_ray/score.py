"""A finished transcription as a notebook-friendly object.

``Score`` is what the SDK hands back, whether the job ran in the service, in a batch,
or in this process: the MusicXML text, the MIDI bytes, the stems, the cleaned notes as
a table, key and tempo. A notebook cell that ends in a Score shows the first page of the
sheet music (verovio SVG); files are fetched lazily, so a Score of a remote job costs
one request until you ask for stems.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Callable, Mapping

from rescored_ray import outputs

Fetch = Callable[[str], bytes]
"""Returns the bytes of one output file by its name in the job folder (``score.mid``, ``stems/bass.flac``)."""


class Score:
    """Scores and data of one transcription; files load on first use."""

    def __init__(self, result: Mapping, fetch: Fetch, *, job_id: str | None = None):
        self.result = dict(result)
        self.job_id = job_id or self.result.get("job_id")
        self._fetch = fetch
        self._cache: dict[str, bytes] = {}

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_dir(cls, folder: str | Path) -> "Score":
        """A Score of an output folder (``rescored-ray transcribe`` / a batch entry / ``save``)."""
        folder = Path(folder)
        result_file = folder / "result.json"
        result = json.loads(result_file.read_text()) if result_file.is_file() else {}
        return cls(result, lambda name: (folder / name).read_bytes())

    # -- data ---------------------------------------------------------------------------------
    def file(self, name: str) -> bytes:
        if name not in self._cache:
            self._cache[name] = self._fetch(name)
        return self._cache[name]

    @property
    def musicxml(self) -> str:
        return self.file("score.musicxml").decode("utf-8")

    @property
    def midi(self) -> bytes:
        return self.file("score.mid")

    @property
    def stem_names(self) -> list[str]:
        """Stems written as audio (none when the mix was transcribed without separation)."""
        stems = list(self.result.get("stems") or [])
        return [] if stems == ["mix"] else stems

    @property
    def stems(self) -> dict[str, bytes]:
        """FLAC bytes of each separated stem."""
        return {name: self.file(f"stems/{name}.flac") for name in self.stem_names}

    @property
    def notes(self):
        """The cleaned notes behind the score (seconds of the recording): a pandas DataFrame with
        stem, pitch, start_s, end_s, velocity, amplitude."""
        import pandas as pd

        rows = list(csv.DictReader(io.StringIO(self.file("notes.csv").decode("utf-8"))))
        frame = pd.DataFrame(rows, columns=list(outputs.NOTES_CSV_COLUMNS))
        return frame.astype({"pitch": "int16", "start_s": "float64", "end_s": "float64", "velocity": "int16",
                             "amplitude": "float32"})

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
    def title(self) -> str | None:
        return self.result.get("title")

    def save(self, folder: str | Path) -> Path:
        """Write score.musicxml, score.mid, notes.csv, stems/*.flac and result.json into ``folder``."""
        folder = Path(folder)
        outputs.write_bytes(folder / "score.musicxml", self.musicxml.encode("utf-8"))
        outputs.write_bytes(folder / "score.mid", self.midi)
        outputs.write_bytes(folder / "notes.csv", self.file("notes.csv"))
        for name, data in self.stems.items():
            outputs.write_bytes(folder / "stems" / f"{name}.flac", data)
        outputs.write_json(folder / "result.json", self.result)
        return folder

    # -- display ------------------------------------------------------------------------------
    def svg(self, page: int = 1) -> str:
        """One page of the sheet music as SVG (verovio)."""
        from rescored_ray.notation import render_svg

        return render_svg(self.musicxml, page=page)

    def _repr_svg_(self) -> str:
        return self.svg()

    def _repr_html_(self) -> str:
        caption = " · ".join(str(part) for part in (
            self.title, self.key, f"{self.tempo:g} bpm" if self.tempo else None,
            f"{self.result.get('n_notes')} notes" if self.result.get("n_notes") is not None else None) if part)
        return f"<figure style='margin:0'>{self.svg()}<figcaption>{caption}</figcaption></figure>"

    def __repr__(self) -> str:
        return (f"Score(job_id={self.job_id!r}, key={self.key!r}, tempo={self.tempo!r}, "
                f"n_notes={self.result.get('n_notes')!r}, stems={self.stem_names!r})")
