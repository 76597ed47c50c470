"""``rescored_ray.transcribe(source)``: one recording to a :class:`Score`, without a service.

Runs the pipeline in this process, or, when a Ray cluster is connected
(``ray.init(...)`` was called), as one Ray task there, the files coming back in
memory so any node may run it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from rescored_ray import layout
from rescored_ray.config import PipelineConfig
from rescored_ray.options import JobOptions
from rescored_ray.score import Score


def transcribe(
    source: str,
    output_dir: str | Path | None = None,
    *,
    config: str | Path | PipelineConfig | None = None,
    progress: bool = True,
    use_ray: bool | None = None,
    **options: Any,
) -> Score:
    """Transcribe ``source`` (URL or local file) and return its :class:`Score`.

    ``config`` is the pipeline's settings or a settings file (:mod:`rescored_ray.settings`);
    ``options`` are :class:`~rescored_ray.options.JobOptions` fields. ``output_dir`` keeps
    the files (a temp folder otherwise); ``use_ray`` defaults to whether Ray is initialised.
    Raises :class:`~rescored_ray.errors.PipelineError`.
    """
    job_options = JobOptions.of(options)
    if not isinstance(config, PipelineConfig):
        from rescored_ray.settings import load_settings

        config = load_settings(config).pipeline
    cfg = job_options.apply(config)
    if use_ray is None:
        try:
            import ray

            use_ray = ray.is_initialized()
        except ImportError:
            use_ray = False
    if use_ray:
        return _on_ray(source, cfg, output_dir)
    folder = Path(output_dir) if output_dir else Path(tempfile.mkdtemp(prefix="rescored_score_"))
    _run_here(source, cfg, folder, progress)
    return Score.from_dir(folder)


def _run_here(source: str, cfg: PipelineConfig, folder: Path, progress: bool) -> None:
    from rescored_ray.pipeline import Pipeline

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=100, desc="transcribe", unit="%", bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}")

    def report(percent: int, stage: str, message: str) -> None:
        if bar is not None:
            bar.update(percent - bar.n)
            bar.set_postfix_str(f"{stage}: {message}"[:60])

    try:
        Pipeline(cfg).run(source, folder, progress=report)
    finally:
        if bar is not None:
            bar.close()


def _run_remote(source: str, settings: dict[str, Any]) -> dict[str, bytes]:
    """Runs on a cluster node: the whole job in a temp folder, every file back as bytes."""
    with tempfile.TemporaryDirectory(prefix="rescored_task_") as tmp:
        _run_here(source, PipelineConfig.model_validate(settings), Path(tmp), progress=False)
        return {p.relative_to(tmp).as_posix(): p.read_bytes() for p in Path(tmp).rglob("*") if p.is_file()}


def _on_ray(source: str, cfg: PipelineConfig, output_dir: str | Path | None) -> Score:
    import json

    import ray

    files = ray.get(ray.remote(num_cpus=1)(_run_remote).remote(source, cfg.model_dump(mode="json")))
    if output_dir:
        from rescored_ray import outputs

        for name, data in files.items():
            outputs.write_bytes(Path(output_dir) / name, data)
    return Score(json.loads(files.get(layout.file("result"), b"{}")), files.__getitem__)
