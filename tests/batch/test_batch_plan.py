"""The batch plan from cluster resources (no cluster needed: nodes are given as Ray reports them)."""

from __future__ import annotations

import pytest

from rescored_ray.batch.plan import GIB, OVERLAP_SHARE, plan_batch
from rescored_ray.errors import ConfigError
from rescored_ray.settings import Settings


def _config(pipeline: dict | None = None, **batch) -> Settings:
    return Settings.model_validate({"batch": batch, "pipeline": pipeline or {}})


def test_two_core_machine_gets_one_single_threaded_demucs_per_core_and_the_rest_beside_them():
    plan = plan_batch(_config(), [{"CPU": 2.0, "GPU": 0.0, "memory": 16 * GIB}])
    assert plan.separator.size == 2 and plan.separator.max_size is None  # fixed pool: no actor starts mid-run
    assert plan.separator.threads == 1 and plan.separator.num_cpus == pytest.approx(1 - OVERLAP_SHARE)
    assert plan.separator.num_gpus == 0
    assert plan.transcriber.size == 1 and plan.transcriber.threads == 1
    assert plan.notation.size == 1 and plan.download.size == 3
    # everything is scheduled at once: the reservations fit the 2 CPUs exactly
    assert plan.reserved_cpus() == pytest.approx(2.0, abs=0.01)
    assert "CPU-only" in plan.describe() and "separator 2 x 0.75 CPU, 1 threads" in plan.describe()


def test_memory_bounds_the_demucs_actors_and_their_threads_grow_instead():
    """A 15-minute song needs about 5 GiB in one Demucs actor: 16 cores with 16 GiB hold 3."""
    plan = plan_batch(_config(), [{"CPU": 16.0, "memory": 16 * GIB}])
    assert plan.separator.size == 3 and plan.separator.threads == 5
    shorter = plan_batch(_config(pipeline={"source": {"max_duration_s": 300}}), [{"CPU": 16.0, "memory": 16 * GIB}])
    assert shorter.separator.size == 6  # shorter songs, smaller actors, more of them
    assert plan_batch(_config(), [{"CPU": 16.0}]).separator.size == 16  # memory unknown: one per core


def test_an_explicit_reservation_sizes_the_pool_to_fit():
    """``transcriber: {num_cpus: 1}`` without a pool size (the quickstart's setting) on 8 CPUs:
    as many actors as fit beside the other stages, never a plan Ray could not schedule."""
    settings = _config(pipeline={"separation": {"model": "none"}}, transcriber={"num_cpus": 1})
    plan = plan_batch(settings, [{"CPU": 8.0, "memory": 16 * GIB}])
    assert plan.transcriber.size == 6 and plan.transcriber.num_cpus == 1
    assert plan.reserved_cpus() <= 8.0 + 1e-9
    # the other stages' explicit reservations count too: fewer transcribers, still schedulable
    settings = _config(
        pipeline={"separation": {"model": "none"}},
        transcriber={"num_cpus": 1},
        download={"num_cpus": 0.5},
        notation={"num_cpus": 0.5},
    )
    plan = plan_batch(settings, [{"CPU": 8.0, "memory": 16 * GIB}])
    assert 1 <= plan.transcriber.size < 6 and plan.reserved_cpus() <= 8.0 + 1e-9


def test_big_cpu_clusters_scale_every_pool():
    plan = plan_batch(_config(), [{"CPU": 32.0, "memory": 256 * GIB}, {"CPU": 16.0, "memory": 128 * GIB}])
    assert plan.separator.size == 48 and plan.separator.threads == 1
    assert plan.transcriber.size == 12 and plan.notation.size == 24 and plan.download.size == 4
    assert plan.reserved_cpus() <= 48


def test_uneven_nodes_size_threads_for_the_smallest():
    plan = plan_batch(_config(separator={"threads": 2}), [{"CPU": 4.0}, {"CPU": 2.0}])
    assert plan.separator.threads == 2 and plan.separator.size == 3
    assert plan.reserved_cpus() <= 6 + 1e-9, plan.describe()
    memory_bound = plan_batch(_config(), [{"CPU": 8.0, "memory": 11 * GIB}, {"CPU": 4.0, "memory": 64 * GIB}])
    assert memory_bound.separator.size == 2 + 4 and memory_bound.separator.threads == 1  # 4-thread on the big one
    # would not suit the small one: threads are one setting for the whole pool


def test_without_separation_basic_pitch_is_the_main_stage():
    plan = plan_batch(_config(pipeline={"separation": {"model": "none"}}), [{"CPU": 8.0, "memory": 32 * GIB}])
    assert plan.separator is None
    assert plan.transcriber.threads == 1 and plan.transcriber.size == 8


def test_gpu_cluster_keeps_fractional_gpu_packing():
    plan = plan_batch(_config(), [{"CPU": 16.0, "GPU": 2.0}])
    assert (plan.separator.size, plan.separator.num_gpus) == (2, 0.5)
    assert (plan.transcriber.size, plan.transcriber.num_gpus) == (4, 0.25)
    assert plan.separator.size * 0.5 + plan.transcriber.size * 0.25 == 2.0  # both cards exactly full
    assert plan.separator.threads is None  # Ray's grant: the GPU does the work


def test_explicit_settings_win_over_the_plan():
    config = _config(
        separator={"num_cpus": 1, "min_actors": 1, "max_actors": 3, "threads": 1},
        transcriber={"min_actors": 2, "threads": 2, "num_cpus": 0.25},
        notation={"concurrency": 2, "num_cpus": 0.25},
        download={"num_cpus": 0.1, "concurrency": 1},
    )
    plan = plan_batch(config, [{"CPU": 8.0}])
    assert (plan.separator.size, plan.separator.max_size, plan.separator.threads, plan.separator.num_cpus) == (
        1,
        3,
        1,
        1,
    )
    assert (plan.transcriber.size, plan.transcriber.threads, plan.transcriber.num_cpus) == (2, 2, 0.25)
    assert (plan.notation.size, plan.notation.num_cpus, plan.download.size, plan.download.num_cpus) == (2, 0.25, 1, 0.1)


def test_settings_that_cannot_fit_the_cluster_are_a_config_error():
    config = _config(separator={"num_cpus": 4, "min_actors": 2})
    with pytest.raises(ConfigError, match=r"reserve .* CPUs but the cluster has 4"):
        plan_batch(config, [{"CPU": 4.0}])
    with pytest.raises(ConfigError, match="no CPUs"):
        plan_batch(_config(), [])
