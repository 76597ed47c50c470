"""Per-job options are declared once (JobOptions); the API schema, the CLI flags and the SDK
keywords are derived from that declaration."""

import pytest
import typer.main

from rescored_ray.cli import app
from rescored_ray.client import Client
from rescored_ray.config import PipelineConfig
from rescored_ray.options import JobOptions, cli_flags, setting_of
from rescored_ray.service.ingress import TranscribeRequest

OPTIONS = list(JobOptions.model_fields)


def test_the_api_schema_is_the_declaration():
    schema = TranscribeRequest.model_json_schema()
    options = schema["$defs"]["JobOptions"]
    assert list(options["properties"]) == OPTIONS and options["additionalProperties"] is False


@pytest.mark.parametrize("command", ["transcribe", "batch", "submit"])
def test_cli_flags_are_the_declaration(command):
    click_command = typer.main.get_command(app).commands[command]
    flags = {opt for param in click_command.params for opt in param.opts}
    assert {flag for flag, _ in cli_flags().values()} <= flags
    assert [name for name, (flag, _) in cli_flags().items()] == OPTIONS


def test_sdk_keywords_are_the_declaration():
    client = Client("http://127.0.0.1:9")  # nothing listens: refusals happen before any request
    with pytest.raises(TypeError, match="colour; expected one of separation, stems, tempo_override, key_override"):
        client.submit("https://example.org/a.mp3", colour="blue")
    with pytest.raises(ValueError, match="tempo_override"):
        client.submit("https://example.org/a.mp3", tempo_override=-5)
    client.close()


def test_each_option_sets_its_declared_setting():
    options = JobOptions.from_cli(
        {"separation": "none", "stems": "other, bass", "tempo_override": 96.0, "key_override": "Gm"}
    )
    applied = options.apply(PipelineConfig())
    for name in OPTIONS:
        section, field = setting_of(name).split(".")
        assert getattr(getattr(applied, section), field) == getattr(options, name)
    assert JobOptions().apply(PipelineConfig()) == PipelineConfig()  # unset options change nothing
