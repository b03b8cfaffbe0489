"""The runtime's typed errors.

Each error carries the HTTP status the server answers with, so the mapping lives in one place
(TEI does the same). Every class subclasses ValueError or RuntimeError as well, so callers that
catch the built-in kinds keep working.
"""

from __future__ import annotations


class GteOnnxError(Exception):
    """Base of every error this package raises on purpose."""

    http_status = 500
    code = "internal_error"


class InvalidInputError(GteOnnxError, ValueError):
    """The texts (or pairs) given to encode/rerank are not acceptable: empty, not strings, ..."""

    http_status = 422
    code = "invalid_input"


class InputTooLongError(InvalidInputError):
    """An input exceeds the model's max length and the truncation policy is "error"."""

    http_status = 413
    code = "input_too_long"


class PrecisionError(InvalidInputError):
    """Quantized output vectors that cannot be made: an unknown precision, int8/uint8 without calibration
    ranges, ranges that do not fit the vectors (width, normalisation), NaN vectors, malformed ranges JSON."""

    code = "precision_error"


class PayloadTooLargeError(GteOnnxError, ValueError):
    """A request holds more inputs or tokens than the server accepts."""

    http_status = 413
    code = "payload_too_large"


class OverloadedError(GteOnnxError, RuntimeError):
    """Too many requests in flight; try again later."""

    http_status = 429
    code = "overloaded"


class ModelFolderError(GteOnnxError, ValueError):
    """A path that is not a usable model folder: missing manifest, missing files, bad manifest."""

    http_status = 500
    code = "model_folder_error"


class IntegrityError(ModelFolderError):
    """A file's sha256 or size does not match the manifest, or external data escapes the folder."""

    code = "integrity_error"


class VariantError(ModelFolderError):
    """A requested variant does not exist in the folder, or none passes its fidelity gate."""

    code = "variant_error"


class ProviderError(GteOnnxError, RuntimeError):
    """A requested execution provider is unavailable, or onnxruntime is missing or broken."""

    http_status = 503
    code = "provider_error"


class MissingDependencyError(GteOnnxError, ImportError):
    """An optional dependency is not installed; the message names the install command."""

    http_status = 500
    code = "missing_dependency"


def missing_dependency(package: str, extra: str, purpose: str) -> MissingDependencyError:
    """Build the error raised when an optional import fails, with the exact install hint."""
    return MissingDependencyError(
        f"{purpose} needs the package '{package}', which is not installed. "
        f"Install it with: pip install 'gte-onnx[{extra}]'"
    )


class UnsupportedModelError(ModelFolderError):
    """A model (hub repo or folder) in none of the forms gte-onnx can run or convert: the message says what
    was found and which forms are supported."""

    code = "unsupported_model"


class UsageError(GteOnnxError, ValueError):
    """Bad command-line input: a missing or unreadable --file, a malformed option value."""

    http_status = 422
    code = "usage_error"


class InferenceError(GteOnnxError, RuntimeError):
    """ONNX Runtime failed while running a graph, or the graph returned an output of the wrong shape; the
    message names the variant's file and what went wrong."""

    http_status = 500
    code = "inference_error"


class BackendUnavailableError(InferenceError):
    """The model run failed for want of a resource (memory, a device); retrying later may work: 503."""

    http_status = 503
    code = "backend_unavailable"


class CorpusFormatError(InvalidInputError):
    """A corpus file that cannot be read as its format: a missing field, a malformed line, a non-text value.
    The message names the file and the line or row."""

    code = "corpus_format_error"


class ResumeMismatchError(InvalidInputError):
    """An output folder holds part of a corpus run made with other settings, so resuming into it would mix
    two runs; the message names each setting that differs."""

    http_status = 409
    code = "resume_mismatch"


class UnverifiedVariantWarning(UserWarning):
    """`variant="auto"` passed over a faster variant whose fidelity was not measured on this CPU's kernel
    family (gte_onnx.inference.kernel_family): the message names it, why, and the command that measures it here."""
