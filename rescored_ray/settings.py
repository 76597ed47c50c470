"""One typed settings root for the CLI, the service and batch runs.

:class:`Settings` has three sections: ``pipeline`` (:mod:`rescored_ray.config`),
``service`` (:mod:`rescored_ray.service.config`) and ``batch``
(:mod:`rescored_ray.batch.config`). :func:`load_settings` layers, each over the last:

1. the defaults in those classes (the package works with no file at all);
2. a YAML file of the same shape (``configs/*.yaml``; in a Serve config file, under
   ``applications[].args.rescored``);
3. environment variables ``RESCORED_<SECTION>__<FIELD>``, nested with ``__``
   (``RESCORED_PIPELINE__SEPARATION__MODEL=none``,
   ``RESCORED_SERVICE__LIMITS__JOBS_PER_WINDOW=null``); a list or mapping is written as
   YAML (``[other, bass]``, ``{alice: token}``), a list also comma-separated;
4. explicit overrides (the CLI's flags, a test's settings).

Unknown keys are errors, and so is an unknown ``RESCORED_*`` variable: the error names the
closest valid one, so a typo never falls back to a default. The names of release 0.1
(``RESCORED_SEPARATION_MODEL``, ``RESCORED_DATA_DIR``, ...) and files without sections
still work in this release, with a :class:`DeprecationWarning` naming the new form.

The environment is read here, once, where a process starts; Ray actors and Serve
replicas get the resolved settings, never their own environment's.
"""

from __future__ import annotations

import difflib
import logging
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.sources.utils import parse_env_vars

from rescored_ray.batch.config import BatchConfig
from rescored_ray.config import PipelineConfig
from rescored_ray.errors import ConfigError
from rescored_ray.service.config import ServiceConfig

log = logging.getLogger(__name__)

ENV_PREFIX = "RESCORED_"
NESTED = "__"
REMOVED_IN = "0.3"

OTHER_VARIABLES = {
    "RESCORED_SERVICE_URL": "SDK and CLI: the service's base URL",
    "RESCORED_API_TOKEN": "SDK and CLI: the bearer token sent to the service",
    "RESCORED_REQUIRE_BROWSER": "tests: a missing Chromium fails the status-page test instead of skipping it",
    "RESCORED_SOUNDFONT": "tests: the General MIDI soundfont that renders test audio",
    "RESCORED_RAY_CLUSTER": "tests: marks the processes of a test Ray cluster",
}
"""``RESCORED_*`` variables that are not settings, read by the code named beside them."""

LEGACY_SERVICE_VARIABLES = {
    "RESCORED_DATA_DIR": ("service", "data_dir"),
    "RESCORED_STORAGE_URI": ("service", "storage_uri"),
    "RESCORED_WORKER_SLOTS": ("service", "worker_slots"),
    "RESCORED_ALLOW_PRIVATE_NETWORKS": ("service", "security", "allow_private_networks"),
    "RESCORED_SOFT_TIME_LIMIT_S": ("service", "soft_time_limit_s"),
    "RESCORED_HARD_TIME_LIMIT_S": ("service", "hard_time_limit_s"),
    "RESCORED_API_TOKENS": ("service", "security", "api_tokens"),
    "RESCORED_RATE_LIMIT_JOBS": ("service", "limits", "jobs_per_window"),
}
"""The service's hand-picked variables of release 0.1 (deprecated)."""


class Settings(BaseSettings):
    """Everything the project can be told, in three sections."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=NESTED,
        case_sensitive=False,
        env_parse_none_str="null",
        extra="forbid",
    )

    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    service: ServiceConfig = Field(default_factory=ServiceConfig)
    batch: BatchConfig = Field(default_factory=BatchConfig)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Only what load_settings() hands over: it layers file < environment < overrides itself, so
        # the environment is checked (unknown and deprecated names) once, and may be a given mapping.
        return (init_settings,)


class _Environment(EnvSettingsSource):
    """pydantic-settings' reading of ``RESCORED_<SECTION>__<FIELD>``, from a given mapping, with
    lists and mappings written as YAML (a superset of JSON)."""

    def __init__(self, environ: Mapping[str, str]):
        self._environ = environ
        super().__init__(Settings)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(self._environ, False, self.env_ignore_empty, self.env_parse_none_str)

    def decode_complex_value(self, field_name: str, field: Any, value: Any) -> Any:
        return yaml.safe_load(value) if isinstance(value, str) else value


def load_settings(
    path: str | os.PathLike[str] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    document: Mapping[str, Any] | None = None,
) -> Settings:
    """Defaults, then the YAML file at ``path`` (or an already-parsed ``document``), then the
    environment (``os.environ`` unless ``env`` is given), then ``overrides``.

    Raises :class:`~rescored_ray.errors.ConfigError` for an unknown ``RESCORED_*`` variable,
    an unknown key or a bad value.
    """
    environ = os.environ if env is None else env
    check_environment(environ)
    data: dict[str, Any] = {}
    if path is not None:
        data = read_settings_file(path)
    elif document is not None:
        data = sections_of(document, where="the given settings")
    for layer in (legacy_overrides(environ), _Environment(environ)(), dict(overrides or {})):
        data = merge(data, layer)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid settings: {' '.join(str(exc).split())}") from exc


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` laid over it, mappings merged key by key."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# -- files -------------------------------------------------------------------------------------


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A YAML file whose top level must be a mapping (an empty file is an empty one)."""
    loaded = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return loaded


def read_settings_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The settings in a YAML file: the file itself, or a Serve config file's
    ``applications[].args.rescored``."""
    document = read_yaml(path)
    if "applications" in document:
        for application in document["applications"] or []:
            args = application.get("args") or {}
            if "rescored" in args:
                return sections_of(args["rescored"] or {}, where=str(path))
        return {}
    return sections_of(document, where=str(path))


def serve_http_options(path: str | os.PathLike[str] | None) -> dict[str, Any]:
    """``http_options`` (host, port) of a Serve config file, if it has any."""
    if path is None:
        return {}
    return dict(read_yaml(path).get("http_options") or {})


def sections_of(document: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``document`` as the root's shape. A file of release 0.1 put one section's keys at the
    top (a pipeline file, a batch file, a service's ``args.rescored``); they are moved under
    the section that has all of them, with a DeprecationWarning."""
    if set(document) == {"rescored"}:  # {rescored: {...}}, as under a Serve app's args
        document = document["rescored"] or {}
    data = {key: value for key, value in document.items() if key in Settings.model_fields}
    loose = {key: value for key, value in document.items() if key not in Settings.model_fields}
    if not loose:
        return data
    section = next((name for name in ("pipeline", "batch", "service") if set(loose) <= set(_fields(name))), None)
    if section is None:
        known = list(Settings.model_fields) + [f for name in Settings.model_fields for f in _fields(name)]
        unknown = next(key for key in loose if key not in known)
        raise ConfigError(f"{where}: unknown key {unknown!r}{_did_you_mean(unknown, known)}")
    _deprecated(
        f"{where}: top-level {', '.join(loose)} belong under '{section}:' (files without sections "
        f"stop working in {REMOVED_IN})"
    )
    data[section] = merge(loose, data.get(section) or {})
    return data


def _fields(section: str) -> list[str]:
    model = Settings.model_fields[section].annotation
    assert isinstance(model, type) and issubclass(model, BaseModel)
    return list(model.model_fields)


def _deprecated(message: str) -> None:
    """A DeprecationWarning for code and tests, and a log line for operators (Python hides
    DeprecationWarnings outside ``__main__`` by default)."""
    warnings.warn(message, DeprecationWarning, stacklevel=4)
    log.warning(message)


# -- environment -------------------------------------------------------------------------------


def variable_names() -> dict[str, tuple[str, ...]]:
    """Every settings variable (``RESCORED_PIPELINE__SEPARATION__MODEL``) and the path it sets,
    sections and sub-sections included (their value is a YAML mapping)."""
    names: dict[str, tuple[str, ...]] = {}

    def walk(model: type[BaseModel], path: tuple[str, ...]) -> None:
        for name, info in model.model_fields.items():
            field_path = (*path, name)
            names[ENV_PREFIX + NESTED.join(field_path).upper()] = field_path
            if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
                walk(info.annotation, field_path)

    walk(Settings, ())
    return names


def legacy_names() -> dict[str, tuple[str, ...]]:
    """The variables of release 0.1: ``RESCORED_<SECTION>_<FIELD>`` for pipeline fields, and
    the service's own table."""
    names: dict[str, tuple[str, ...]] = {}

    def walk(model: type[BaseModel], path: tuple[str, ...]) -> None:
        for name, info in model.model_fields.items():
            if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
                walk(info.annotation, (*path, name))
            else:
                names[ENV_PREFIX + "_".join((*path, name)).upper()] = ("pipeline", *path, name)

    walk(PipelineConfig, ())
    names.update(LEGACY_SERVICE_VARIABLES)
    return names


def _is_dict_entry(name: str, known: Mapping[str, tuple[str, ...]]) -> bool:
    """``RESCORED_SERVICE__SECURITY__API_TOKENS__ALICE``: one entry of a mapping setting."""
    for prefix, path in known.items():
        if name.startswith(prefix + NESTED):
            model: Any = Settings
            for part in path[:-1]:
                model = model.model_fields[part].annotation
            annotation = model.model_fields[path[-1]].annotation
            if "dict" in str(annotation):
                return True
    return False


def check_environment(environ: Mapping[str, str]) -> None:
    """Refuse an unknown ``RESCORED_*`` variable (naming the closest valid one) and warn about
    each deprecated one."""
    current, legacy = variable_names(), legacy_names()
    for raw in sorted(environ):
        name = raw.upper()
        if not name.startswith(ENV_PREFIX) or name in current or name in OTHER_VARIABLES:
            continue
        if name in legacy:
            new = ENV_PREFIX + NESTED.join(legacy[name]).upper()
            _deprecated(f"{raw} is deprecated; use {new} (the old name stops working in {REMOVED_IN})")
            continue
        if _is_dict_entry(name, current):
            continue
        choices = {
            **{n: n for n in current},
            **{n: ENV_PREFIX + NESTED.join(p).upper() for n, p in legacy.items()},
            **{n: n for n in OTHER_VARIABLES},
        }
        raise ConfigError(f"unknown environment variable {raw}{_did_you_mean(name, list(choices), choices)}")


def _did_you_mean(name: str, candidates: list[str], rename: Mapping[str, str] | None = None) -> str:
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    if not close:
        return ""
    return f"; did you mean {(rename or {}).get(close[0], close[0])}?"


def legacy_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """The deprecated variables that are set, as nested settings (values read as YAML scalars,
    as release 0.1 did: ``true``, ``12``, ``null``; an empty value is null)."""
    legacy = legacy_names()
    result: dict[str, Any] = {}
    for raw, value in environ.items():
        path = legacy.get(raw.upper())
        if path is None:
            continue
        node = result
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = yaml.safe_load(value) if value != "" else None
    return result
