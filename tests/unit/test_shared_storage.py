"""Shared results and the store's selection, without Ray: ``s3://`` results on a real S3-API
server on loopback (moto's), the batch manifest on it, ``service.ledger`` URLs, and what a
cluster of several nodes refuses at start."""

from __future__ import annotations

import logging

import pyarrow.parquet as pq
import pytest

from rescored_ray.batch.manifest import COMPLETED, MANIFEST, PARTS, Manifest
from rescored_ray.errors import ConfigError
from rescored_ray.service.app import check_cluster
from rescored_ray.service.config import ServiceConfig
from rescored_ray.service.ledger import SQLiteJobStore
from rescored_ray.service.ledger_client import ledger_kind, open_store
from rescored_ray.storage import ResultStore, is_local_uri


def test_results_on_s3_put_list_read_and_delete(s3_server, tmp_path):
    uri = s3_server.uri("results", "svc/one")
    store = ResultStore(uri)
    assert not store.local and store.url("j1/score.musicxml") == "s3://results/svc/one/j1/score.musicxml"
    folder = tmp_path / "job"
    (folder / "stems").mkdir(parents=True)
    (folder / "score.musicxml").write_text("<score-partwise/>")
    (folder / "stems" / "bass.flac").write_bytes(b"fLaC" + bytes(3 << 20))  # several upload chunks
    keys = store.put_dir(folder, "j1")
    assert keys == {"score.musicxml": "j1/score.musicxml", "stems/bass.flac": "j1/stems/bass.flac"}
    # another process (another node) sees the same objects through the URI alone
    again = ResultStore(uri)
    assert again.read_bytes("j1/score.musicxml") == b"<score-partwise/>"
    assert again.list_files("j1/stems") == ["j1/stems/bass.flac"] and again.exists("j1/stems/bass.flac")
    raw = s3_server.filesystem().get_file_info("results/svc/one/j1/stems/bass.flac")
    assert raw.size == 4 + (3 << 20)
    again.delete_prefix("j1")  # what the ledger's expiry sweep does with a job's results
    assert again.list_files("j1") == [] and not again.exists("j1/score.musicxml")


def test_batch_manifest_on_s3(s3_server):
    store = ResultStore(s3_server.uri("batch", "run"))
    Manifest(store, "run-1").append([{"id": "a", "url": "https://example.org/a.mp3", "status": COMPLETED}])
    assert len(store.list_files(PARTS)) == 1
    second = Manifest(store, "run-2")
    assert set(second.load()) == {"a"}
    second.consolidate()
    assert store.list_files(PARTS) == [] and store.exists(MANIFEST)
    table = pq.read_table(f"batch/run/{MANIFEST}", filesystem=s3_server.filesystem())
    assert table.column("status").to_pylist() == [COMPLETED]


def test_ledger_urls_select_the_store(tmp_path, redis_server):
    assert ServiceConfig(data_dir=str(tmp_path)).ledger_url == f"sqlite:///{tmp_path}/ledger.sqlite3"
    with pytest.raises(ValueError, match="sqlite:///PATH or redis://"):
        ServiceConfig(ledger="postgres://x/y")
    assert ledger_kind("redis://127.0.0.1:6379/0") == "redis" and ledger_kind("sqlite:////x") == "sqlite"
    sqlite = open_store(ServiceConfig(ledger=f"sqlite:///{tmp_path}/l.sqlite3"))
    assert isinstance(sqlite, SQLiteJobStore) and (tmp_path / "l.sqlite3").exists()
    sqlite.close()
    redis = open_store(ServiceConfig(ledger=redis_server.url(), ledger_prefix="sel:"))
    job, _ = redis.submit("https://example.org/a.mp3", "k", {}, "default")
    import redis as redis_py

    assert redis_py.Redis.from_url(redis_server.url()).exists(f"sel:job:{job.job_id}")
    redis.close()


def test_a_cluster_refuses_local_results_and_warns_about_sqlite(caplog):
    assert is_local_uri("/data/results") and is_local_uri("file:///data") and not is_local_uri("s3://b/p")
    local = ServiceConfig(storage_uri="/data/results")
    check_cluster(local, nodes=1)  # one node: the embedded default is right
    with pytest.raises(ConfigError, match="s3://bucket/prefix"):
        check_cluster(local, nodes=3)
    check_cluster(ServiceConfig(storage_uri="/shared/nfs", allow_local_storage_on_cluster=True), nodes=3)
    with caplog.at_level(logging.WARNING, logger="rescored_ray.service.app"):
        check_cluster(ServiceConfig(storage_uri="s3://b/p"), nodes=3)
    assert "SQLite ledger" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rescored_ray.service.app"):
        check_cluster(ServiceConfig(storage_uri="s3://b/p", ledger="redis://127.0.0.1:1/0"), nodes=3)
    assert caplog.text == ""
