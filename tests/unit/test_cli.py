"""The ``rescored-ray`` command, run as a user would (a subprocess)."""

import json
import subprocess
import sys
from pathlib import Path

import music21

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "rescored_ray.cli", *args], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


def test_transcribe_bundled_example_with_demo_config(tmp_path):
    out = tmp_path / "demo"
    proc = run_cli("transcribe", "examples/chorale.mp3", "-o", str(out), "--config", "configs/demo.yaml", "--key", "G")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out / "score.musicxml")
    score = music21.converter.parse(str(out / "score.musicxml"))
    assert len(score.recurse().notes) > 50
    result = json.loads((out / "result.json").read_text())
    assert result["key"].lower().startswith("g") and result["stems"] == ["mix"]
    assert "notes" in proc.stderr  # the one-line summary


def test_url_source_and_tempo_override(http_server, tmp_path):
    proc = run_cli(
        "transcribe",
        http_server.url("chorale.flac"),
        "-o",
        str(tmp_path),
        "--separation",
        "none",
        "--stems",
        "mix",
        "--tempo",
        "90",
        "--quiet",
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "result.json").read_text())["tempo_bpm"] == 90


def test_permanent_failure_is_one_line_and_exit_2(http_server, tmp_path):
    proc = run_cli("transcribe", http_server.url("page.html"), "-o", str(tmp_path), "--separation", "none")
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error (download, permanent): no media found"), proc.stderr
    assert not (tmp_path / "score.musicxml").exists()


def test_transient_failure_exits_1(http_server, tmp_path):
    proc = run_cli("transcribe", http_server.url("status/503/a.mp3"), "-o", str(tmp_path), "--separation", "none")
    assert proc.returncode == 1 and "error (download, transient)" in proc.stderr


def test_invalid_source_and_config_errors(tmp_path):
    proc = run_cli("transcribe", "ftp://example.org/a.mp3", "-o", str(tmp_path))
    assert proc.returncode == 2 and "only http(s)" in proc.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("separation:\n  modle: x\n")
    proc = run_cli("transcribe", "examples/chorale.mp3", "-o", str(tmp_path), "--config", str(bad))
    assert proc.returncode == 2 and "invalid configuration" in proc.stderr
    # a ledger URL that names no store stops `serve` before any Ray starts
    proc = run_cli("serve", "--ledger", "postgres://db/jobs")
    assert proc.returncode == 2 and "sqlite:///PATH or redis://HOST:PORT/DB" in proc.stderr


def test_expand_lists_playlist_entries_as_json_lines(rss_feed_info):
    proc = run_cli("expand", rss_feed_info.url)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["url"] for r in rows] == [item.url for item in rss_feed_info.items]
