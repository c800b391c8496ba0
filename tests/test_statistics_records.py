"""Every statistics record of the project declares a kind and a help text per field."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import attrs
import pytest

import kumo
from kumo.model.statistics import Histogram, Kind, declared_fields, is_statistics_record


def statistics_records() -> list[type]:
    """Every class named ``*Statistics`` defined in a module of the ``kumo`` package."""
    found = []
    for module_info in pkgutil.walk_packages(kumo.__path__, "kumo."):
        module = importlib.import_module(module_info.name)
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and name.endswith("Statistics")
                and value.__module__ == module.__name__
            ):
                found.append(value)
    return found


def test_the_records_are_found() -> None:
    names = {cls.__name__ for cls in statistics_records()}
    assert names >= {
        "EngineStatistics",
        "LogStatistics",
        "BroadcasterStatistics",
        "ActorStatistics",
        "DeliveryLogStatistics",
    }


def test_every_field_declares_a_kind_and_help() -> None:
    for cls in statistics_records():
        assert attrs.has(cls), f"{cls.__qualname__} is not an attrs record"
        assert is_statistics_record(cls), f"{cls.__qualname__} has an undeclared field"
        for field in declared_fields(cls):
            assert field.help.strip().endswith("."), (cls.__qualname__, field.name)


def example(cls: type) -> object:
    """An instance of a statistics record, its fields filled after their kinds."""
    types = attrs.fields_dict(attrs.resolve_types(cls))
    values: dict[str, object] = {}
    for field in declared_fields(cls):
        match field.kind:
            case Kind.COUNTER | Kind.GAUGE:
                values[field.name] = 0
            case Kind.INFO:
                values[field.name] = ""
            case Kind.HISTOGRAM:
                values[field.name] = Histogram.empty()
            case Kind.RECORD:
                nested = types[field.name].type
                assert isinstance(nested, type), (cls.__qualname__, field.name)
                values[field.name] = example(nested)
    return cls(**values)


def test_records_are_frozen_and_complete() -> None:
    for cls in statistics_records():
        instance = example(cls)
        name = attrs.fields(cls)[0].name
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            setattr(instance, name, 1)
