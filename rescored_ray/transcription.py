"""Note transcription with Spotify's Basic Pitch, run on its bundled ONNX model.

A :class:`Transcriber` opens one onnxruntime session and transcribes arrays
directly: no temp files, windows batched through the model (the windows of all of a
song's stems share calls), and Basic Pitch's own windowing, unwrapping and note decoding,
so that with ``profile: stock`` results equal ``basic_pitch.inference.predict``. By default
each stem is decoded with the settings measured for its kind and the notes are refined
against the activations and the audio (:mod:`rescored_ray.refine`; see
:class:`~rescored_ray.config.TranscriptionConfig`). The session's threads come from the
CPUs Ray grants the replica or actor (:mod:`rescored_ray.resources`); its other options
are the measured fastest (``bench/onnx_sessions.py``). On CUDA, calls carry a fixed,
larger number of windows, so the provider tunes its kernels once.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import soxr

from rescored_ray import refine
from rescored_ray.config import StemSettings, TranscriptionConfig
from rescored_ray.errors import NonRetryableError, RetryableError
from rescored_ray.resources import model_threads
from rescored_ray.types import Audio, Note

log = logging.getLogger(__name__)

STAGE = "transcription"
PITCHED_STEMS = ("other", "bass", "vocals", "guitar", "piano", "mix")
"""Stems that carry pitched notes; ``drums`` is never transcribed."""

# Basic Pitch constants (basic_pitch.constants), repeated so importing this module stays cheap.
MODEL_SAMPLE_RATE = 22050
FFT_HOP = 256
AUDIO_N_SAMPLES = MODEL_SAMPLE_RATE * 2 - FFT_HOP
N_OVERLAPPING_FRAMES = 30
OVERLAP_LEN = N_OVERLAPPING_FRAMES * FFT_HOP
HOP_SIZE = AUDIO_N_SAMPLES - OVERLAP_LEN
ANNOTATIONS_FPS = MODEL_SAMPLE_RATE // FFT_HOP
OUTPUT_NAMES = ("StatefulPartitionedCall:1", "StatefulPartitionedCall:2", "StatefulPartitionedCall:0")
INPUT_NAME = "serving_default_input_2:0"
OUTPUT_KEYS = ("note", "onset", "contour")
BATCH_WINDOWS = {"cpu": 8, "cuda": 256}
"""Windows per call when the config says nothing: on CPUs 4-8 measured fastest, 16 and more
no faster (``bench/onnx_sessions.py``); a GPU wants enough windows to fill it."""


@contextlib.contextmanager
def _quiet_basic_pitch_import() -> Iterator[None]:
    """basic_pitch/__init__ logs a warning per missing backend (TF, CoreML, TFLite)."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def _basic_pitch() -> Any:
    with _quiet_basic_pitch_import():
        import basic_pitch
        from basic_pitch import note_creation
    return basic_pitch, note_creation


def default_model_path() -> Path:
    basic_pitch, _ = _basic_pitch()
    return Path(basic_pitch.__file__).parent / "saved_models" / "icassp_2022" / "nmp.onnx"


def _providers(device: str) -> list[str | tuple[str, dict[str, str]]]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device.startswith("cuda") and "CUDAExecutionProvider" not in available:
        raise NonRetryableError("transcription.device is cuda but onnxruntime has no CUDA provider", stage=STAGE)
    if "CUDAExecutionProvider" in available:
        index = device.partition(":")[2] or "0"
        # every call has the same shape (padded batches), so an exhaustive cuDNN search pays once
        cuda = {"device_id": index, "cudnn_conv_algo_search": "EXHAUSTIVE", "arena_extend_strategy": "kSameAsRequested"}
        return [("CUDAExecutionProvider", cuda), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def session_options(config: TranscriptionConfig, threads: int) -> Any:
    """onnxruntime SessionOptions from the config (see ``TranscriptionConfig`` for each choice)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = config.inter_op_threads
    options.execution_mode = (
        ort.ExecutionMode.ORT_PARALLEL if config.inter_op_threads > 1 else ort.ExecutionMode.ORT_SEQUENTIAL
    )
    options.graph_optimization_level = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[config.graph_optimization]
    options.enable_cpu_mem_arena = config.memory_arena
    spin = "1" if config.spinning else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    options.add_session_config_entry("session.inter_op.allow_spinning", spin)
    return options


class Transcriber:
    """Holds one Basic Pitch ONNX session and turns audio arrays into notes."""

    def __init__(self, config: TranscriptionConfig | None = None, *, model_path: str | Path | None = None):
        import onnxruntime as ort

        self.config = config or TranscriptionConfig()
        self.model_path = Path(model_path) if model_path else default_model_path()
        self.threads = model_threads(self.config.threads)
        started = time.perf_counter()
        try:
            self.session = ort.InferenceSession(
                str(self.model_path),
                sess_options=session_options(self.config, self.threads),
                providers=_providers(self.config.device),
            )
        except Exception as exc:
            raise NonRetryableError(f"cannot load the Basic Pitch model {self.model_path}: {exc}", stage=STAGE) from exc
        self.load_seconds = time.perf_counter() - started
        self.providers = self.session.get_providers()
        on_gpu = self.providers[0] == "CUDAExecutionProvider"
        self.batch_windows = self.config.batch_windows or BATCH_WINDOWS["cuda" if on_gpu else "cpu"]
        self.pad_batches = on_gpu
        _, self._notes = _basic_pitch()
        # An all-zero window normalises differently inside a batch than alone (0/0 in the
        # model's dB scaling), so silent windows get the output of a lone zero window,
        # exactly as stock Basic Pitch computes them, and skip the model.
        silent = self._run(np.zeros((1, AUDIO_N_SAMPLES, 1), dtype=np.float32))
        self._silent_output = {name: value[0] for name, value in zip(OUTPUT_KEYS, silent, strict=False)}
        self._output_shapes = {name: value.shape for name, value in self._silent_output.items()}
        log.info(
            "loaded Basic Pitch (%s, %d threads, %d windows per call) in %.2f s",
            self.providers[0],
            self.threads,
            self.batch_windows,
            self.load_seconds,
        )

    # -- model output -------------------------------------------------------------------------
    def model_output(self, audio: Audio | np.ndarray, sample_rate: int | None = None) -> dict[str, np.ndarray]:
        """Basic Pitch's raw activations (``note``, ``onset``, ``contour``) for a recording."""
        return self.model_outputs([self._model_input(audio, sample_rate)])[0]

    def model_outputs(self, monos: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Activations of several mono 22.05 kHz recordings, their windows sharing model calls."""
        if not monos:
            return []
        pad = np.zeros(OVERLAP_LEN // 2, dtype=np.float32)
        per_recording = [_windows(np.concatenate([pad, mono])) for mono in monos]
        outputs = self._activations(np.concatenate(per_recording))
        bounds = np.cumsum([0] + [len(windows) for windows in per_recording])
        return [
            {key: _unwrap(value[start:end], mono.shape[0]) for key, value in outputs.items()}
            for mono, start, end in zip(monos, bounds[:-1], bounds[1:], strict=True)
        ]

    def _activations(self, windows: np.ndarray) -> dict[str, np.ndarray]:
        """The model's outputs for each window; silent windows skip the model."""
        silent = ~np.any(windows, axis=(1, 2))
        outputs = {
            name: np.empty((len(windows), *shape), dtype=np.float32) for name, shape in self._output_shapes.items()
        }
        for name in outputs:
            outputs[name][silent] = self._silent_output[name]
        active = np.flatnonzero(~silent)
        for start in range(0, len(active), self.batch_windows):
            rows = active[start : start + self.batch_windows]
            batch = windows[rows]
            if self.pad_batches and len(rows) < self.batch_windows:  # one shape for every GPU call
                batch = np.concatenate([batch, np.repeat(batch[-1:], self.batch_windows - len(rows), axis=0)])
            for name, value in zip(outputs, self._run(batch), strict=False):
                outputs[name][rows] = value[: len(rows)]
        return outputs

    def _run(self, batch: np.ndarray) -> list[np.ndarray]:
        try:
            outputs: list[np.ndarray] = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: batch})
            return outputs
        except Exception as exc:  # onnxruntime raises plain RuntimeErrors (e.g. CUDA allocation)
            raise RetryableError(f"Basic Pitch inference failed: {exc}", stage=STAGE) from exc

    @staticmethod
    def _model_input(audio: Audio | np.ndarray, sample_rate: int | None) -> np.ndarray:
        if isinstance(audio, Audio):
            samples, rate = audio.samples, audio.sample_rate
        else:
            if sample_rate is None:
                raise ValueError("sample_rate is required with a bare array")
            samples, rate = np.asarray(audio), sample_rate
        mono = samples.mean(axis=0) if samples.ndim == 2 else samples
        mono = np.ascontiguousarray(mono, dtype=np.float32)
        if rate != MODEL_SAMPLE_RATE:
            mono = soxr.resample(mono, rate, MODEL_SAMPLE_RATE, quality="HQ").astype(np.float32, copy=False)
        return mono

    # -- notes -------------------------------------------------------------------------------
    def settings_for(self, stem: str) -> StemSettings:
        """How ``stem``'s notes are read (see :meth:`TranscriptionConfig.for_stem`)."""
        return self.config.for_stem(stem)

    def notes_from_output(
        self, output: Mapping[str, np.ndarray], stem: str = "mix", audio: np.ndarray | None = None
    ) -> list[Note]:
        """Decode activations into notes with Basic Pitch's own polyphonic decoder, using
        ``stem``'s settings, then refine them (:mod:`rescored_ray.refine`) when those settings
        say so and ``audio`` (the model's mono 22.05 kHz input, see :meth:`model_input`) is
        given. Without refinement the notes are exactly Basic Pitch's."""
        settings = self.settings_for(stem)
        if output["note"].shape[0] < 2:  # under ~12 ms of audio: nothing a note could fit in
            return []
        min_note_len = int(np.round(settings.minimum_note_length_ms / 1000 * (MODEL_SAMPLE_RATE / FFT_HOP)))
        # The decoder zeroes activations outside the frequency range in place: it gets copies.
        events = self._notes.output_to_notes_polyphonic(
            np.array(output["note"]),
            np.array(output["onset"]),
            onset_thresh=settings.onset_threshold,
            frame_thresh=settings.frame_threshold,
            infer_onsets=True,
            min_note_len=min_note_len,
            min_freq=settings.minimum_frequency,
            max_freq=settings.maximum_frequency,
            melodia_trick=settings.melodia_trick,
        )
        times = self._notes.model_frames_to_time(output["contour"].shape[0])
        if settings.refine is None or audio is None:
            rows = [(float(times[start]), float(times[end]), int(p), float(a)) for start, end, p, a in events]
        else:
            evidence = refine.Evidence.from_output(output, audio, times)
            decoded = [refine.NoteEvent(float(start), float(end), int(p), float(a)) for start, end, p, a in events]
            refined = refine.refine(decoded, evidence, settings.refine)
            rows = [(*refine.to_seconds((e.start, e.end), times), e.pitch, e.amplitude) for e in refined]
        notes = [
            Note(
                start_s=start,
                end_s=end,
                pitch=pitch,
                velocity=int(np.clip(round(127 * amplitude), 1, 127)),
                stem=stem,
                amplitude=amplitude,
            )
            for start, end, pitch, amplitude in rows
            if end > start
        ]
        notes.sort(key=lambda n: (n.start_s, n.pitch))
        return notes

    @property
    def ran_on(self) -> list[dict[str, Any]]:
        """The ONNX Runtime provider that runs the model (see :func:`rescored_ray.timeline.ran_on`)."""
        return [{"device": self.providers[0]}]

    def model_input(self, audio: Audio | np.ndarray, sample_rate: int | None = None) -> np.ndarray:
        """The mono 22.05 kHz audio the model hears (and refinement measures)."""
        return self._model_input(audio, sample_rate)

    def transcribe(self, audio: Audio, stem: str = "mix") -> list[Note]:
        """Notes of one recording or stem, tagged with ``stem``."""
        if audio.frames == 0:
            return []
        output = self.model_output(audio)
        heard = self.model_input(audio) if self.settings_for(stem).refine is not None else None
        return self.notes_from_output(output, stem=stem, audio=heard)

    def transcribe_stems(
        self,
        stems: Mapping[str, Audio],
        wanted: Iterable[str] | None = None,
        progress: Callable[[float, str], None] | None = None,
    ) -> dict[str, list[Note]]:
        """Transcribe each pitched stem asked for (drums are always skipped); the stems'
        windows go through the model together, then each stem's notes are decoded."""
        names = stems_to_transcribe(stems, wanted or self.config.stems)
        audible = [name for name in names if stems[name].frames]
        heard = {name: self._model_input(stems[name], None) for name in audible}
        outputs = dict(zip(audible, self.model_outputs([heard[name] for name in audible]), strict=False))
        result: dict[str, list[Note]] = {}
        for index, name in enumerate(names):
            if name in outputs:  # refinement measures the audio the model heard
                result[name] = self.notes_from_output(outputs[name], stem=name, audio=heard[name])
            else:
                result[name] = []
            if progress is not None:
                progress((index + 1) / len(names), name)
        return result


def stems_to_transcribe(available: Iterable[str], wanted: Iterable[str]) -> list[str]:
    """The wanted stems that exist, drums never; the mix when nothing was separated."""
    available = list(available)
    names = [name for name in wanted if name in available and name != "drums"]
    if not names and "mix" in available:
        names = ["mix"]
    return names


def _windows(padded: np.ndarray) -> np.ndarray:
    """Basic Pitch's windowing (``window_audio_file``), as one (n, samples, 1) array."""
    starts = range(0, padded.shape[0], HOP_SIZE)
    windows = np.zeros((len(starts), AUDIO_N_SAMPLES, 1), dtype=np.float32)
    for row, start in enumerate(starts):
        chunk = padded[start : start + AUDIO_N_SAMPLES]
        windows[row, : chunk.shape[0], 0] = chunk
    return windows


def _unwrap(output: np.ndarray, original_length: int) -> np.ndarray:
    """Basic Pitch's ``unwrap_output``: drop overlaps, join windows, trim to the audio."""
    n_olap = N_OVERLAPPING_FRAMES // 2
    output = output[:, n_olap:-n_olap, :]
    n_frames = int(np.floor(original_length * (ANNOTATIONS_FPS / MODEL_SAMPLE_RATE)))
    return output.reshape(output.shape[0] * output.shape[1], output.shape[2])[:n_frames, :]
