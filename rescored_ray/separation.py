"""Source separation with Demucs: one loaded model, many songs.

A :class:`Separator` loads its model once (by name from the Hugging Face cache or
a local repo folder, ``demucs_unittest`` for tests, ``random:htdemucs`` for
benchmarks) and then separates in-memory audio into named stems, in the precision
:mod:`rescored_ray.precision` resolves for the device (``auto``: fp16 on CUDA, bf16 on
CPUs with native bf16, fp32 elsewhere). A song that runs out of GPU memory falls back
to the CPU.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rescored_ray.config import SeparationConfig
from rescored_ray.errors import ModelLoadError, NonRetryableError, RetryableError
from rescored_ray.interfaces import Checkpoint, FractionCallback
from rescored_ray.precision import DTYPES, resolve_precision
from rescored_ray.resources import model_threads
from rescored_ray.types import Audio

log = logging.getLogger(__name__)

STAGE = "separation"
RANDOM_PREFIX = "random:"
KNOWN_MODELS = ("htdemucs", "htdemucs_6s", "htdemucs_ft", "demucs_unittest")
FOUR_STEMS = ["drums", "bass", "other", "vocals"]
SIX_STEMS = ["drums", "bass", "other", "vocals", "guitar", "piano"]

DemucsModel = Any
r"""A Demucs model or bag of models (Demucs is untyped; they are ``torch.nn.Module``\ s with ``sources``,
``samplerate`` and ``segment``)."""

__all__ = ["ModelLoadError", "Separator", "apply_batched", "load_demucs", "random_htdemucs", "resolve_device"]


def resolve_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def load_demucs(name: str, repo: str | os.PathLike[str] | None = None) -> DemucsModel:
    """Load a Demucs model (or bag of models) the way ``demucs.pretrained`` does,
    with errors that say why instead of Demucs' ``sys.exit``."""
    from demucs.pretrained import get_model

    if name.startswith(RANDOM_PREFIX):
        return random_htdemucs(name[len(RANDOM_PREFIX) :])
    repo_path = Path(repo).expanduser() if repo else None
    if repo_path is not None and not repo_path.is_dir():
        raise ModelLoadError(f"Demucs repo folder {repo_path} does not exist or is not a folder", stage=STAGE)
    try:
        with _seeded(0):  # demucs_unittest has no checkpoint: seeded, every actor builds the same model
            model = get_model(name, repo=repo_path)
    except (Exception, SystemExit) as exc:  # Demucs calls sys.exit() on some failures
        raise ModelLoadError(_load_failure_message(name, repo_path, exc), stage=STAGE) from exc
    model.eval()
    return model


def _load_failure_message(name: str, repo: Path | None, exc: BaseException) -> str:
    if repo is not None:
        return (
            f"Demucs model {name!r} could not be loaded from the local repo {repo}: {exc!r}. "
            f"The folder needs {name}.yaml and the checkpoint files it lists."
        )
    from huggingface_hub import constants

    return (
        f"Demucs model {name!r} could not be loaded: it is not in the Hugging Face cache "
        f"({constants.HF_HUB_CACHE}) and the hub could not be reached"
        f"{' (HF_HUB_OFFLINE is set)' if constants.HF_HUB_OFFLINE else ''}: {exc!r}. "
        "On a connected machine run `huggingface-cli download adefossez/HTDemucs` (or the model's repo) "
        "and copy the cache, or set separation.repo to a local Demucs repo folder."
    )


def random_htdemucs(name: str = "htdemucs") -> DemucsModel:
    """A full-size HTDemucs with random weights: the real model's compute, no real output.

    For benchmarks on machines that cannot download weights. Its stems are noise.
    """
    from demucs.htdemucs import HTDemucs

    sources = {"htdemucs": FOUR_STEMS, "htdemucs_ft": FOUR_STEMS, "htdemucs_6s": SIX_STEMS}.get(name)
    if sources is None:
        raise ModelLoadError(f"no random-weight recipe for {name!r}; use one of htdemucs, htdemucs_6s", stage=STAGE)
    with _seeded(0):  # the same weights in every process, so runs and replicas agree
        model = HTDemucs(sources=list(sources), samplerate=44100, segment=Fraction(39, 5))
    model.eval()
    log.warning("separation model random:%s has RANDOM weights: for benchmarks only, its stems are noise", name)
    return model


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch for model construction without touching the caller's random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class Separator:
    """Holds one Demucs model and separates songs into stems."""

    def __init__(self, config: SeparationConfig | None = None, *, model: DemucsModel | None = None):
        self.config = config or SeparationConfig()
        if not self.config.enabled:
            raise ValueError("separation is switched off (model: none); do not build a Separator")
        started = time.perf_counter()
        self.model = model if model is not None else load_demucs(self.config.model, self.config.repo)
        self.load_seconds = time.perf_counter() - started
        self.device = resolve_device(self.config.device)
        self.model.to(self.device)
        self.threads = model_threads(self.config.threads)
        if torch.get_num_threads() != self.threads:  # process-wide: one Separator per replica/actor process
            torch.set_num_threads(self.threads)
        self.precision = self.precision_for(self.device)
        self.cpu_fallbacks = 0
        self.last_device = str(self.device)
        self.last_precision = self.precision
        log.info(
            "loaded Demucs %s on %s (%s, %d threads) in %.1f s",
            self.config.model,
            self.device,
            self.precision,
            self.threads,
            self.load_seconds,
        )

    @property
    def name(self) -> str:
        return self.config.model

    @property
    def is_random(self) -> bool:
        return self.config.model.startswith(RANDOM_PREFIX)

    @property
    def sources(self) -> list[str]:
        return list(self.model.sources)

    @property
    def sample_rate(self) -> int:
        return int(self.model.samplerate)

    def precision_for(self, device: torch.device) -> str:
        """``fp32``/``fp16``/``bf16`` on ``device`` (a CUDA fallback song runs in the CPU's)."""
        return resolve_precision(self.config.precision, device.type)

    def separate(
        self,
        audio: Audio,
        progress: FractionCallback | None = None,
        checkpoint: Checkpoint | None = None,
    ) -> dict[str, Audio]:
        """Split ``audio`` into stems (name -> stereo Audio at the input's rate).

        ``checkpoint`` is called between chunks; an exception it raises (a soft time
        limit, a cancellation) abandons the song at once.
        """
        if audio.sample_rate != self.sample_rate:
            raise NonRetryableError(
                f"separator expects {self.sample_rate} Hz audio, got {audio.sample_rate} Hz", stage=STAGE
            )
        mix = torch.from_numpy(np.ascontiguousarray(audio.samples, dtype=np.float32))
        reference = mix.mean(0)
        mean, std = reference.mean(), reference.std()
        if not torch.isfinite(std) or std < 1e-8:  # digital silence: nothing to separate
            return {name: Audio(np.zeros_like(audio.samples), audio.sample_rate) for name in self.sources}
        normalised = ((mix - mean) / std)[None]
        try:
            stems = self._apply_with_fallback(normalised, progress, checkpoint)
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        stems = stems[0] * std + mean
        return {
            name: Audio(stems[index].numpy().astype(np.float32, copy=False), audio.sample_rate)
            for index, name in enumerate(self.sources)
        }

    @property
    def ran_on(self) -> list[dict[str, Any]]:
        """Where and in which precision the last song was separated (``cpu (fallback)``
        after a CUDA OOM); see :func:`rescored_ray.timeline.ran_on`."""
        return [{"device": self.last_device, "model": self.name, "precision": self.last_precision}]

    def _apply_with_fallback(
        self, mix: torch.Tensor, progress: FractionCallback | None, checkpoint: Checkpoint | None
    ) -> torch.Tensor:
        self.last_device, self.last_precision = str(self.device), self.precision
        try:
            return self._apply(mix, self.device, progress, checkpoint)
        except torch.cuda.OutOfMemoryError as exc:
            if self.device.type != "cuda":
                raise
            self.cpu_fallbacks += 1
            log.warning(
                "CUDA out of memory separating a %.0f s song (%s); retrying this song on the CPU",
                mix.shape[-1] / self.sample_rate,
                exc,
            )
            torch.cuda.empty_cache()
            self.last_device = "cpu (fallback)"
            self.last_precision = self.precision_for(torch.device("cpu"))
            return self._apply(mix, torch.device("cpu"), progress, checkpoint)
        except RuntimeError as exc:
            if "out of memory" in str(exc).lower():
                raise RetryableError(f"out of memory during separation: {exc}", stage=STAGE) from exc
            raise

    def _apply(
        self, mix: torch.Tensor, device: torch.device, progress: FractionCallback | None, checkpoint: Checkpoint | None
    ) -> torch.Tensor:
        """One call of Demucs' ``apply_model`` on ``device`` (the model moves there)."""
        from demucs.apply import apply_model

        length = mix.shape[-1]
        cfg = self.config

        def on_chunk(info: dict[str, Any]) -> None:
            if checkpoint is not None:
                checkpoint()
            if progress is not None and info.get("state") == "end":
                segment = float(cfg.segment or getattr(self.model, "segment", 8.0) or 8.0)
                done = min(1.0, (info.get("segment_offset", 0) + segment * self.sample_rate) / length)
                passes = max(1, cfg.shifts)
                fraction = info.get("model_idx_in_bag", 0) + (info.get("shift_idx", 0) + done) / passes
                progress(min(1.0, fraction / max(1, info.get("models", 1))))

        dtype = DTYPES[self.precision_for(device)]
        autocast = (
            torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            if cfg.batch_chunks > 1 and cfg.shifts == 0:
                out = apply_batched(
                    self.model,
                    mix.to(device),
                    batch_chunks=cfg.batch_chunks,
                    overlap=cfg.overlap,
                    segment=cfg.segment,
                    callback=on_chunk,
                )
            else:
                out = apply_model(
                    self.model,
                    mix.to(device),
                    shifts=cfg.shifts,
                    split=True,
                    overlap=cfg.overlap,
                    device=device,
                    segment=cfg.segment,
                    callback=on_chunk,
                )
        return out.float().cpu()


def apply_batched(
    model: DemucsModel,
    mix: torch.Tensor,
    *,
    batch_chunks: int,
    overlap: float = 0.25,
    segment: float | None = None,
    transition_power: float = 1.0,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> torch.Tensor:
    """Demucs' ``apply_model(split=True, shifts=0)`` with ``batch_chunks`` chunks per forward pass.

    The same chunks (Demucs' ``TensorChunk``, padded with the neighbouring audio), the same
    triangular cross-fade and the same bag-of-models weighting; only the forward passes are
    batched, which is what keeps a GPU busy (stock Demucs runs one 7.8 s chunk at a time).
    ``callback`` gets ``{"state": "end", "segment_offset", "model_idx_in_bag", "models"}``
    after each batch, like Demucs' own.
    """
    from demucs.apply import BagOfModels, TensorChunk, center_trim
    from demucs.htdemucs import HTDemucs

    if isinstance(model, BagOfModels):
        estimates: torch.Tensor | None = None
        totals = [0.0] * len(model.sources)
        for index, (sub_model, weights) in enumerate(zip(model.models, model.weights, strict=True)):
            sub_callback = (
                None
                if callback is None
                else (lambda info, i=index: callback({**info, "model_idx_in_bag": i, "models": len(model.models)}))
            )
            out = apply_batched(
                sub_model,
                mix,
                batch_chunks=batch_chunks,
                overlap=overlap,
                segment=segment,
                transition_power=transition_power,
                callback=sub_callback,
            )
            for k, weight in enumerate(weights):
                out[:, k] *= weight
                totals[k] += weight
            estimates = out if estimates is None else estimates + out
        assert estimates is not None, "a bag of models has at least one model"
        for k in range(estimates.shape[1]):
            estimates[:, k] /= totals[k]
        return estimates

    batch, channels, length = mix.shape
    chunk_seconds = segment if segment is not None else model.segment
    segment_length = int(model.samplerate * chunk_seconds)
    stride = int((1 - overlap) * segment_length)
    weight = torch.cat(
        [
            torch.arange(1, segment_length // 2 + 1, device=mix.device),
            torch.arange(segment_length - segment_length // 2, 0, -1, device=mix.device),
        ]
    )
    weight = (weight / weight.max()) ** transition_power
    out = torch.zeros(batch, len(model.sources), channels, length, device=mix.device)
    sum_weight = torch.zeros(length, device=mix.device)
    offsets = list(range(0, length, stride))
    for start in range(0, len(offsets), batch_chunks):
        group = offsets[start : start + batch_chunks]
        chunks = [TensorChunk(mix, offset, segment_length) for offset in group]
        padded = []
        for chunk in chunks:  # the padding apply_model's inner call gives each chunk
            if isinstance(model, HTDemucs) and segment is not None:
                valid_length = int(segment * model.samplerate)
            elif hasattr(model, "valid_length"):
                valid_length = model.valid_length(chunk.length)
            else:
                valid_length = chunk.length
            padded.append(chunk.padded(valid_length))
        if len({p.shape[-1] for p in padded}) == 1:
            results = model(torch.cat(padded, dim=0)).split(batch, dim=0)
        else:  # models whose valid length depends on the chunk's: the short last chunk alone
            results = [model(p) for p in padded]
        for offset, chunk, result in zip(group, chunks, results, strict=True):
            chunk_out = center_trim(result, chunk.length)
            chunk_length = chunk_out.shape[-1]
            out[..., offset : offset + segment_length] += weight[:chunk_length] * chunk_out
            sum_weight[offset : offset + segment_length] += weight[:chunk_length]
        if callback is not None:
            callback({"state": "end", "segment_offset": group[-1], "model_idx_in_bag": 0, "models": 1})
    return out / sum_weight
