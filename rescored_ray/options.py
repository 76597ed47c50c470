"""Per-job options: the one declaration behind the API's ``options``, the CLI flags and the SDK keywords.

:class:`JobOptions` is the request schema the service validates (and documents in its
OpenAPI), :func:`cli_flags` turns its fields into the ``rescored-ray`` flags, the SDK's
``submit``/``transcribe`` keywords are its field names (checked by :meth:`JobOptions.of`),
and :meth:`JobOptions.apply` sets the pipeline setting each option stands for. Adding an
option means adding one field here.

Only pydantic is imported: the SDK uses this module too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from rescored_ray.layout import NAME_PATTERN

if TYPE_CHECKING:
    from rescored_ray.config import PipelineConfig


def _stem_name(name: str) -> str:
    if not NAME_PATTERN.match(name) or "-" in name:
        raise ValueError(f"invalid stem name {name!r} (lower-case letters, digits and _, at most 32)")
    return name


StemName = Annotated[str, AfterValidator(_stem_name)]


@dataclass(frozen=True)
class Sets:
    """Field metadata: the pipeline setting an option overrides, and its command-line flag."""

    setting: str
    """Dotted path in :class:`~rescored_ray.config.PipelineConfig`, e.g. ``"notation.tempo_override"``."""
    flag: str


class JobOptions(BaseModel):
    """What one job may choose for itself; unset options keep the deployment's settings."""

    model_config = ConfigDict(extra="forbid")

    separation: Annotated[str | None, Sets("separation.model", "--separation")] = Field(
        None, max_length=64, description="Demucs model name, or 'none' (the service accepts only its deployed one)."
    )
    stems: Annotated[list[StemName] | None, Sets("transcription.stems", "--stems")] = Field(
        None, max_length=8, description="Stems to transcribe (comma-separated on the command line)."
    )
    tempo_override: Annotated[float | None, Sets("notation.tempo_override", "--tempo")] = Field(
        None, gt=0, le=400, description="Tempo in BPM instead of estimating it."
    )
    key_override: Annotated[str | None, Sets("notation.key_override", "--key")] = Field(
        None, max_length=32, description="Key (e.g. Gm, 'E- major') instead of estimating it."
    )

    @classmethod
    def of(cls, options: Mapping[str, Any]) -> JobOptions:
        """SDK keywords as options: an unknown keyword is a TypeError naming the valid ones."""
        unknown = sorted(set(options) - set(cls.model_fields))
        if unknown:
            raise TypeError(f"unknown option(s) {', '.join(unknown)}; expected one of {', '.join(cls.model_fields)}")
        try:
            return cls.model_validate({k: v for k, v in options.items() if v is not None})
        except ValidationError as exc:
            raise ValueError(" ".join(str(exc).split())) from None

    @classmethod
    def from_cli(cls, values: Mapping[str, Any]) -> JobOptions:
        """Flags as options: a list option is given comma-separated (``--stems other,bass``)."""
        parsed = {}
        for name, value in values.items():
            if isinstance(value, str) and name in _LIST_OPTIONS:
                value = [part.strip() for part in value.split(",") if part.strip()]
            parsed[name] = value
        return cls.of(parsed)

    def given(self) -> dict[str, Any]:
        """The options that were set (the service's ``options``, the SDK's request)."""
        return self.model_dump(exclude_none=True)

    def apply(self, config: PipelineConfig) -> PipelineConfig:
        """``config`` with these options in force."""
        from rescored_ray.config import PipelineConfig
        from rescored_ray.settings import merge

        overrides: dict[str, Any] = {}
        for name, value in self.given().items():
            section, field = setting_of(name).split(".")
            overrides.setdefault(section, {})[field] = value
        return PipelineConfig.model_validate(merge(config.model_dump(), overrides))


_LIST_OPTIONS = {name for name, info in JobOptions.model_fields.items() if "list" in str(info.annotation)}


def setting_of(option: str) -> str:
    """The pipeline setting ``option`` overrides (``"transcription.stems"``)."""
    return _sets(option).setting


def cli_flags() -> dict[str, tuple[str, str | None]]:
    """Option name -> (flag, help) for every option, in declaration order."""
    return {name: (_sets(name).flag, info.description) for name, info in JobOptions.model_fields.items()}


def _sets(option: str) -> Sets:
    for meta in JobOptions.model_fields[option].metadata:
        if isinstance(meta, Sets):
            return meta
    raise LookupError(f"option {option!r} declares no setting")
