"""Reading the model folder's JSON files with errors that name the file and the field.

A manifest edited by hand, truncated by a failed copy or written by another tool must fail with a
ModelFolderError that says which file, which field and what was expected, never with a KeyError or a
TypeError from deep inside the runtime.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from gte_onnx.errors import ModelFolderError

_MISSING = object()
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """The JSON object in `path`; a file that is unreadable, not UTF-8, not JSON or not an object is a
    ModelFolderError that says which of these it is."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ModelFolderError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ModelFolderError(
            f"cannot read the {what} {path}: it is not UTF-8 text (byte {exc.start}: {exc.reason})"
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelFolderError(
            f"cannot read the {what} {path}: it is not valid JSON ({exc.msg} at line {exc.lineno}, "
            f"column {exc.colno})"
        ) from None
    except (ValueError, RecursionError) as exc:  # a number too long for int(), nesting too deep to parse
        raise ModelFolderError(f"cannot read the {what} {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ModelFolderError(f"the {what} {path} holds a JSON {_json_type(data)}, not an object")
    return data


def _json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else type(value).__name__


def is_int(value: Any) -> bool:
    """A JSON integer (true/false are not numbers here)."""
    return isinstance(value, int) and not isinstance(value, bool)


class Fields:
    """Typed access to one JSON object; `where` names the file and `prefix` the object inside it."""

    def __init__(self, data: Any, where: str, prefix: str = ""):
        self.where = where
        self.prefix = prefix
        if not isinstance(data, Mapping):
            raise ModelFolderError(f"{where}: {prefix or 'the manifest'} must be an object, got {_json_type(data)}")
        self.data = data

    def _name(self, key: str) -> str:
        return f"{self.prefix} field {key!r}" if self.prefix else f"field {key!r}"

    def _get(self, key: str, default: Any) -> Any:
        value = self.data.get(key, _MISSING)
        if value is _MISSING:
            if default is _MISSING:
                raise ModelFolderError(f"{self.where}: {self.prefix or 'the manifest'} is missing the field {key!r}")
            return default
        return value

    def _wrong(self, key: str, expected: str, value: Any) -> ModelFolderError:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        return ModelFolderError(
            f"{self.where}: the {self._name(key)} must be {expected}, got {_json_type(value)} {shown}"
        )

    def integer(self, key: str, default: Any = _MISSING, minimum: int = 0, maximum: int = INT32_MAX) -> int:
        """An integer in [minimum, maximum]; the bound keeps huge JSON numbers from overflowing the native
        libraries (tokenizers, onnxruntime) that receive them."""
        value = self._get(key, default)
        if not is_int(value) or not minimum <= value <= maximum:
            raise self._wrong(key, f"an integer from {minimum} to {maximum}", value)
        return value

    def boolean(self, key: str, default: Any = _MISSING) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise self._wrong(key, "true or false", value)
        return value

    def string(self, key: str, default: Any = _MISSING) -> str:
        value = self._get(key, default)
        if not isinstance(value, str) or not value:
            raise self._wrong(key, "a non-empty string", value)
        return value

    def choice(self, key: str, allowed: Sequence[str], default: Any = _MISSING) -> str:
        value = self._get(key, default)
        if not isinstance(value, str) or value not in allowed:
            raise self._wrong(key, f"one of {', '.join(allowed)}", value)
        return value

    def mapping(self, key: str, default: Any = _MISSING) -> dict[str, Any]:
        value = self._get(key, default)
        if not isinstance(value, Mapping):
            raise self._wrong(key, "an object", value)
        return dict(value)

    def strings(self, key: str, default: Any = _MISSING, allow_empty: bool = False) -> tuple[str, ...]:
        value = self._get(key, default)
        if (
            not isinstance(value, (list, tuple))
            or not (value or allow_empty)
            or not all(isinstance(item, str) and item for item in value)
        ):
            expected = "an array of non-empty strings" + ("" if allow_empty else " (at least one)")
            raise self._wrong(key, expected, value)
        return tuple(value)

    def file_name(self, key: str, default: Any = _MISSING) -> str:
        """A path relative to the model folder, one the operating system can take."""
        value = self.string(key, default)
        if not usable_path(value):
            raise self._wrong(key, "a file name without NUL or unpaired surrogate characters", value)
        return value

    def file_names(self, key: str, default: Any = _MISSING) -> tuple[str, ...]:
        values = self.strings(key, default, allow_empty=True)
        if not all(usable_path(value) for value in values):
            raise self._wrong(key, "file names without NUL or unpaired surrogate characters", values)
        return values


def usable_path(name: str) -> bool:
    """False for what os functions refuse with ValueError: NUL bytes, and text with unpaired surrogates
    (JSON can spell them as \\ud800) that the file system encoding cannot encode."""
    try:
        os.fsencode(name)
    except UnicodeError:
        return False
    return "\x00" not in name
