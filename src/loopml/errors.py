"""Typed errors. Every message says what failed, with which value, and how to fix it."""

from __future__ import annotations


class LoopmlError(Exception):
    """Base class of every error loopml raises on purpose."""

    exit_code = 2


class ConfigError(LoopmlError):
    """The project file, a profile or an environment override is invalid."""


class PluginError(LoopmlError):
    """A plugin failed to load, declared a bad hook, or two plugins clash."""


class UnknownBackendError(ConfigError):
    """Config names a backend that no loaded plugin provides."""


class StorageError(LoopmlError):
    """An artifact store operation failed."""


class UnsafeKeyError(StorageError, ValueError):
    """An object key could escape the store root or is not in canonical form."""


class ObjectNotFoundError(StorageError, KeyError):
    """No object is stored under the key."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "object not found"


class ObjectExistsError(StorageError):
    """A create-only write met an existing object with different content."""


class IntegrityError(StorageError):
    """Stored bytes do not match their recorded sha256: the object is corrupt."""


class DataValidationError(LoopmlError):
    """Input data was rejected; nothing was stored."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        column: str | None = None,
        row: int | None = None,
        example: object = None,
    ) -> None:
        super().__init__(message)
        self.file = file
        self.column = column
        self.row = row
        self.example = example


class DatasetNotFoundError(LoopmlError, KeyError):
    """No dataset version matches the reference."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "dataset not found"


class RegistryError(LoopmlError):
    """A model registry operation failed."""


class ApprovalRequiredError(RegistryError):
    """The registry's approval policy says this alias moves only through an approved request."""


class SeparationOfDutiesError(RegistryError):
    """Someone tried to approve what they trained or requested (or to decide twice)."""


class RegistryUnavailableError(RegistryError):
    """The registry's database cannot be reached (down, failing over, refusing connections)."""


class RegistrySchemaError(RegistryError):
    """The registry's schema is not the one this loopml reads: upgrade it (or loopml) explicitly."""


class ModelNotFoundError(RegistryError, KeyError):
    """No model version matches the name, version or alias."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "model not found"


class StaleAliasError(RegistryError):
    """Compare-and-set refused: the alias no longer points where the caller expected."""

    def __init__(self, message: str, *, expected: int | None, actual: int | None) -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual


class RunNotFoundError(LoopmlError, KeyError):
    """No tracked run has that id."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "run not found"
