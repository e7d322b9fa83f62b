"""The agent's errors, each with the exit code the command ends with."""

from __future__ import annotations


class AgentError(Exception):
    """A failure worth retrying later (the CA or charon unreachable, a transient refusal)."""

    exit_code = 1


class UsageError(AgentError):
    """The command line or the agent directory is not usable as given."""

    exit_code = 2


class TrustError(AgentError):
    """The CA could not be trusted (wrong fingerprint, TLS verification failed): nothing was sent."""

    exit_code = 4


class NeedsEnrollment(AgentError):
    """Re-enrollment is refused for good (certificate expired, revoked, unknown): a new token is needed."""

    exit_code = 3
