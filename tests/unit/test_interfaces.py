"""Every implementation of the pipeline's model protocols and of the job store protocol
conforms to it: the members exist, and each method takes the protocol's parameters (same
names, same kinds; anything extra has a default). mypy checks the types statically."""

import inspect
import typing

import pytest
import typing_extensions

from rescored_ray.interfaces import NoteTranscriber, StemSeparator
from rescored_ray.separation import Separator
from rescored_ray.service.ledger import JobStore, SQLiteJobStore
from rescored_ray.service.models import RemoteSeparator, RemoteTranscriber
from rescored_ray.service.redis_store import RedisJobStore
from rescored_ray.transcription import Transcriber


def protocol_members(protocol: type) -> dict[str, object]:
    return {name: getattr(protocol, name) for name in sorted(typing_extensions.get_protocol_members(protocol))}


def assert_conforms(implementation: type, protocol: type) -> None:
    for name, member in protocol_members(protocol).items():
        assert (
            hasattr(implementation, name)
            or name in getattr(implementation, "__annotations__", {})
            or name in inspect.signature(implementation).parameters
            or _assigned_in_init(implementation, name)
        ), f"{implementation.__name__} lacks {name}"
        if isinstance(member, property) or not callable(member):
            continue
        wanted = inspect.signature(member).parameters
        given = inspect.signature(getattr(implementation, name)).parameters
        for param in wanted.values():
            assert param.name in given, f"{implementation.__name__}.{name} lacks parameter {param.name}"
            assert given[param.name].kind == param.kind, f"{implementation.__name__}.{name}({param.name}) kind"
            if param.default is not inspect.Parameter.empty:
                assert given[param.name].default is not inspect.Parameter.empty, (
                    f"{implementation.__name__}.{name}({param.name}) needs a default"
                )
        for extra in set(given) - set(wanted):
            assert given[extra].default is not inspect.Parameter.empty or given[extra].kind in (
                inspect.Parameter.VAR_POSITIONAL,
                inspect.Parameter.VAR_KEYWORD,
            ), f"{implementation.__name__}.{name} needs {extra}, which callers never pass"


def _assigned_in_init(implementation: type, name: str) -> bool:
    return f"self.{name}" in inspect.getsource(implementation)


@pytest.mark.parametrize(
    "implementation, protocol",
    [
        (Separator, StemSeparator),
        (RemoteSeparator, StemSeparator),
        (Transcriber, NoteTranscriber),
        (RemoteTranscriber, NoteTranscriber),
        (SQLiteJobStore, JobStore),
        (RedisJobStore, JobStore),
    ],
)
def test_implementation_conforms_to_its_protocol(implementation, protocol):
    assert_conforms(implementation, protocol)


def test_protocols_name_what_is_called():
    assert set(protocol_members(StemSeparator)) == {"separate", "ran_on"}
    assert set(protocol_members(NoteTranscriber)) == {"transcribe_stems", "ran_on"}
    assert {"submit", "lease", "heartbeat", "complete", "fail", "cancel", "events", "next_ready_at"} <= set(
        protocol_members(JobStore)
    )


def test_a_live_store_is_a_job_store(tmp_path):
    with SQLiteJobStore(tmp_path / "ledger.sqlite3") as store:
        assert isinstance(store, JobStore)


def test_a_non_conforming_class_is_caught():
    class Wrong:
        ran_on: typing.ClassVar[list] = []

        def separate(self, audio, progress):  # no checkpoint, and progress without a default
            return {}

    with pytest.raises(AssertionError, match="separate"):
        assert_conforms(Wrong, StemSeparator)
