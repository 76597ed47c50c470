"""The output layout: one table from which file names, routes, SDK URLs, downloads and the
batch manifest's columns all follow, so a new kind of output is one new row."""

import pytest

from rescored_ray import layout
from rescored_ray.batch.manifest import OUTPUT_COLUMNS, SCHEMA
from rescored_ray.client import file_url
from rescored_ray.score import Score
from rescored_ray.service.ingress import _files
from rescored_ray.service.ledger import JobRecord, JobStatus

PARTS = layout.Output("parts", "parts/part-{name}.pdf", "application/pdf", "parts/{name}", "{job_id}-part-{name}.pdf")


@pytest.mark.parametrize("row", layout.LAYOUT, ids=lambda row: row.kind)
def test_every_served_file_round_trips_through_its_route(row):
    path = row.file_for("bass" if row.multi else None)
    assert layout.kind_of(path) == (row, "bass" if row.multi else "")
    if row.route is None:
        with pytest.raises(KeyError):
            layout.route_of(path)
        return
    route = layout.route_of(path).lstrip("/")
    head, _, name = route.partition("/")
    assert layout.resolve(head, name or None) == (row, path)
    assert file_url("j1", path) == f"/api/v1/scores/j1{layout.route_of(path)}"


def test_names_that_could_be_paths_are_refused():
    for bad in ("../x", "Bass", "a/b", "", "x" * 40):
        with pytest.raises(ValueError):
            layout.resolve("stems", bad)
    assert layout.resolve("nothing") is None and layout.kind_of("stems/../ledger.flac") is None
    with pytest.raises(KeyError, match="there are musicxml"):
        layout.output("wav")


def test_the_shipped_layout_and_the_manifest_columns():
    assert layout.file("musicxml") == "score.musicxml" and layout.file("stems", "bass") == "stems/bass.flac"
    assert OUTPUT_COLUMNS == {
        "musicxml": "musicxml",
        "midi": "midi",
        "notes": "notes",
        "preview": "preview",
        "pdf": "pdf",
        "pages": "page_files",
        "stems": "stem_files",
        "result": "result",
    }
    assert set(OUTPUT_COLUMNS.values()) <= set(SCHEMA.names)


def test_a_new_output_is_one_row(monkeypatch, tmp_path):
    """A multi-file kind added to the table (one PDF per instrument, say) is
    resolved, routed, listed by the service and saved by the SDK, with no other change."""
    monkeypatch.setattr(layout, "LAYOUT", (*layout.LAYOUT, PARTS))
    outputs = ["parts/part-1.pdf", "parts/part-2.pdf", "result.json", "score.musicxml"]
    assert file_url("j1", "parts/part-2.pdf") == "/api/v1/scores/j1/parts/2"
    assert layout.resolve("parts", "2") == (PARTS, "parts/part-2.pdf")
    assert layout.files_of("parts", outputs) == {"1": "parts/part-1.pdf", "2": "parts/part-2.pdf"}

    job = JobRecord(
        job_id="j1",
        source="s",
        dedup_key="k",
        options={},
        priority="default",
        status=JobStatus.COMPLETED,
        result={"outputs": outputs},
    )
    listed = {(f["kind"], f["name"], f["url"]) for f in _files(job, "http://h")}
    assert ("parts", "2", "http://h/api/v1/scores/j1/parts/2") in listed
    assert ("musicxml", None, "http://h/api/v1/scores/j1") in listed

    fetched = []
    score = Score({"outputs": outputs}, lambda name: fetched.append(name) or name.encode())
    score.save(tmp_path)
    assert (tmp_path / "parts" / "part-2.pdf").read_text() == "parts/part-2.pdf"
    assert sorted(fetched) == ["parts/part-1.pdf", "parts/part-2.pdf", "score.musicxml"]


def test_a_job_recorded_by_release_0_1_is_still_served():
    """0.1 recorded outputs as file name -> store key; the download routes still find them."""
    old = {"score.musicxml": "j0/score.musicxml", "stems/bass.flac": "j0/stems/bass.flac"}
    assert layout.listed(old) == ["score.musicxml", "stems/bass.flac"]
    job = JobRecord(
        job_id="j0",
        source="s",
        dedup_key="k",
        options={},
        priority="default",
        status=JobStatus.COMPLETED,
        result={"outputs": old},
    )
    assert {f["url"] for f in _files(job, "")} == {"/api/v1/scores/j0", "/api/v1/scores/j0/stems/bass"}
