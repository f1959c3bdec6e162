"""Small typed errors. Each carries the HTTP status it maps to; the CLI, the
REST API and the console translate them in one place each."""


class ProvisionerError(Exception):
    status = 500

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class ConfigError(ProvisionerError):
    """The settings file is wrong; the message names the key."""

    status = 500


class InvalidInput(ProvisionerError):
    status = 400


class Forbidden(ProvisionerError):
    status = 403


class NotFound(ProvisionerError):
    status = 404


class Conflict(ProvisionerError):
    status = 409
