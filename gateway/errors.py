"""The error hierarchy that decides what happens to a delivery.

    GatewayError
    ├── ConfigError          configuration or rules rejected (file, key, reason)
    └── DeliveryError        a destination did not take an instance
        ├── TransientError   retry with backoff (peer down, timeout, 0xA7xx out of resources)
        └── PermanentError   dead-letter now (rejected SOP class, 0xC0xx cannot understand)

Retry policy is decided by the type, never by matching message text.
"""


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """Configuration or rules rejected; `problems` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class DeliveryError(GatewayError):
    """A destination did not take an instance."""


class TransientError(DeliveryError):
    """Worth retrying later: the destination may take it then."""


class PermanentError(DeliveryError):
    """Retrying will not help: dead-letter now and keep the reason."""
