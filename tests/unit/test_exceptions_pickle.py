"""Every exception class backshift defines survives a pickle round trip: readers run in forked
processes (ops/save.py's ProcessPoolExecutor), so whatever one raises comes back pickled."""

from __future__ import annotations

import importlib
import inspect
import pickle
import pkgutil

import pytest

import backshift


def _exception_classes() -> list[type[BaseException]]:
    """Every BaseException subclass defined (not merely imported) in a backshift module."""
    found = {}
    for info in pkgutil.walk_packages(backshift.__path__, "backshift."):
        if info.name.endswith(".__main__"):  # runs the CLI when imported
            continue
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == module.__name__:
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return [found[name] for name in sorted(found)]


CLASSES = _exception_classes()


def _instance(cls: type[BaseException]) -> BaseException:
    """An instance built the way the code builds one: each positional parameter gets a value
    of its annotated type (int or str), *args gets three distinct strings."""
    try:
        params = list(inspect.signature(cls).parameters.values())
    except ValueError:  # no __init__ of its own: BaseException's, which takes *args
        return cls("/some/path", "a cause", "3")
    args: list[object] = []
    for param in params:
        if param.kind is param.VAR_POSITIONAL:
            args += ["/some/path", "a cause", "3"]
        elif param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            if param.default is not param.empty:
                continue
            is_int = str(param.annotation) in ("int", "<class 'int'>")
            args.append(7 + len(args) if is_int else f"v{len(args)}")
    return cls(*args)


def test_exception_discovery_finds_the_known_classes():
    names = {cls.__name__ for cls in CLASSES}
    assert {"BackshiftError", "ChunkCorrupt", "WrongSize", "BodyError", "SkipFile",
            "BadPath", "LegacyFormatError"} <= names


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: f"{cls.__module__}.{cls.__qualname__}")
def test_exception_survives_pickle_round_trip(cls):
    original = _instance(cls)
    copy = pickle.loads(pickle.dumps(original))
    assert type(copy) is cls
    assert str(copy) == str(original)
    assert copy.args == original.args
    assert vars(copy) == vars(original)
