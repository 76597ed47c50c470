"""The output layout: one table from which file names, routes, SDK URLs, downloads and the
batch manifest's columns all follow, so a new kind of output is one new row."""

import pytest

from rescored_ray import layout
from rescored_ray.batch.manifest import OUTPUT_COLUMNS, SCHEMA
from rescored_ray.client import file_url
from rescored_ray.score import Score
from rescored_ray.service.ingress import _files
from rescored_ray.service.ledger import JobRecord, JobStatus

PAGES = layout.Output("pages", "pages/page-{name}.svg", "image/svg+xml", "pages/{name}", "{job_id}-page-{name}.svg")


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
        layout.output("pdf")


def test_the_shipped_layout_and_the_manifest_columns():
    assert layout.file("musicxml") == "score.musicxml" and layout.file("stems", "bass") == "stems/bass.flac"
    assert OUTPUT_COLUMNS == {
        "musicxml": "musicxml",
        "midi": "midi",
        "notes": "notes",
        "preview": "preview",
        "stems": "stem_files",
        "result": "result",
    }
    assert set(OUTPUT_COLUMNS.values()) <= set(SCHEMA.names)


def test_a_new_output_is_one_row(monkeypatch, tmp_path):
    """A multi-file kind added to the table (as the notation engine's pages will be) is
    resolved, routed, listed by the service and saved by the SDK, with no other change."""
    monkeypatch.setattr(layout, "LAYOUT", (*layout.LAYOUT, PAGES))
    outputs = ["pages/page-1.svg", "pages/page-2.svg", "result.json", "score.musicxml"]
    assert file_url("j1", "pages/page-2.svg") == "/api/v1/scores/j1/pages/2"
    assert layout.resolve("pages", "2") == (PAGES, "pages/page-2.svg")
    assert layout.files_of("pages", outputs) == {"1": "pages/page-1.svg", "2": "pages/page-2.svg"}

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
    assert ("pages", "2", "http://h/api/v1/scores/j1/pages/2") in listed
    assert ("musicxml", None, "http://h/api/v1/scores/j1") in listed

    fetched = []
    score = Score({"outputs": outputs}, lambda name: fetched.append(name) or name.encode())
    score.save(tmp_path)
    assert (tmp_path / "pages" / "page-2.svg").read_text() == "pages/page-2.svg"
    assert sorted(fetched) == ["pages/page-1.svg", "pages/page-2.svg", "score.musicxml"]


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
