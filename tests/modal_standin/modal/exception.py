"""The stand-in's `modal.exception`: the classes (and hierarchy) of modal 1.6.4 that the
bridge maps, plus a few it may meet. ConflictError is an InvalidError and
SandboxTimeoutError a TimeoutError, as in the real SDK; TimeoutError here, like Modal's,
is not Python's builtin TimeoutError."""


class Error(Exception):
    """Base class for all Modal errors."""


class AlreadyExistsError(Error):
    pass


class AuthError(Error):
    pass


class InternalError(Error):
    pass


class InvalidError(Error):
    pass


class ConflictError(InvalidError):
    pass


class DataLossError(Error):
    pass


class NotFoundError(Error):
    pass


class PermissionDeniedError(Error):
    pass


class ResourceExhaustedError(Error):
    pass


class ServiceError(Error):
    pass


class UnimplementedError(Error):
    pass


class RemoteError(Error):
    pass


class TimeoutError(Error):  # noqa: A001 (Modal's own name)
    pass


class SandboxTimeoutError(TimeoutError):
    pass


class ExecTimeoutError(TimeoutError):
    pass


class SandboxTerminatedError(Error):
    pass


class ConnectionError(Error):  # noqa: A001
    pass


class VersionError(Error):
    pass


class ExecutionError(Error):
    pass


class ClientClosed(Error):
    pass
