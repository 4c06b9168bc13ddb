"""The one error tree of the container.

    InfernetTGIError                  every error raised on purpose; knows its HTTP status
    ├── ConfigError                   startup only: a TGI_INF_* setting is malformed
    ├── JobError                      the job itself is wrong; never retried
    │   ├── BadJobError               400 the body is not an Infernet job / data has the wrong shape
    │   ├── InputDecodeError          400 on-chain hex or ABI bytes are not a valid encoding
    │   ├── ProofNotSupportedError    400 requires_proof without an attestation key, or on a stream
    │   ├── UnauthorizedError         401 the bearer token is missing or wrong
    │   ├── PayloadTooLargeError      413 the body or the prompt is over the operator's limit
    │   ├── ParameterError            422 a generation parameter breaks TGI's rules (TGI's message)
    │   └── UnsupportedRequestError   422 the configured engine has no way to do what the job asks
    ├── ConstraintViolationError      502 the answer breaks the job's response_pool/json_format/grammar
    ├── ShutdownError                 503 the container stopped before the job finished (grace period over)
    └── UpstreamError                 the backend failed; `retryable` says whether to try again
        ├── UpstreamValidationError   422 the backend rejected the request (its message kept)
        ├── UpstreamGenerationError   424 the backend failed while generating
        ├── UpstreamOverloadedError   429 the backend is overloaded (retryable)
        ├── UpstreamUnavailableError  503 connection refused/reset, or the backend answered 503 (retryable)
        ├── UpstreamTimeoutError      504 no answer within the timeout (retryable)
        ├── UpstreamShardError        503 TGI shard not ready (424) / shard timeout (504) (retryable)
        └── UpstreamProtocolError     502 the backend answered something we cannot read, or a 500

Foreign exceptions (socket, TLS and HTTP-parser failures, pydantic, eth-abi) are translated where they
enter: the HTTP client's in `upstream.http` (called by `upstream.client`), pydantic in `jobs`, eth-abi
in `onchain`. Every error
renders as the Ritual JSON convention `{"code": "<status>", "name": "<reason>", "description": "<cause>"}`.
"""

from __future__ import annotations

from http import HTTPStatus


class InfernetTGIError(Exception):
    """Raised when anything fails on purpose (the base); `status` is the HTTP status it is served with."""

    status: int = 500
    retryable: bool = False

    @property
    def description(self) -> str:
        return str(self)

    def body(self) -> dict[str, str]:
        """The Ritual error body; `code` is a string because the node compares it with "200"."""
        return {
            "code": str(self.status),
            "name": HTTPStatus(self.status).phrase,
            "description": self.description,
        }


class ConfigError(InfernetTGIError):
    """Raised when a setting is malformed at startup; the message names the variable."""


class JobError(InfernetTGIError):
    """Raised when the job is wrong; the caller must change it, so it is never retried."""

    status = 400


class BadJobError(JobError):
    """Raised when the body is not an Infernet job or its `data` has the wrong shape."""


class InputDecodeError(JobError):
    """Raised when on-chain `data` is not unprefixed even-length hex of a valid ABI encoding."""


class ProofNotSupportedError(JobError):
    """Raised when a job asks for a proof the container cannot give (no key, or a stream job)."""


class UnauthorizedError(JobError):
    """Raised when a bearer token is configured and the request does not carry it."""

    status = 401


class PayloadTooLargeError(JobError):
    """Raised when the body or the prompt exceeds the operator's configured limit."""

    status = 413


class ParameterError(JobError):
    """Raised when a generation parameter breaks TGI's rules, with TGI's own message."""

    status = 422


class UnsupportedRequestError(JobError):
    """Raised when the job asks for something the configured engine cannot do (a parameter with no
    equivalent there, a chat job on a server without a chat route); refused before any upstream call."""

    status = 422


class ConstraintViolationError(InfernetTGIError):
    """Raised when an answer is not in the job's response_pool, or is not JSON matching its
    json_format/grammar: the upstream ignored the constraint, or the answer was cut short."""

    status = 502


class ShutdownError(InfernetTGIError):
    """Raised when the container is stopping and a job did not finish within the grace period."""

    status = 503


class UpstreamError(InfernetTGIError):
    """Raised when the backend fails; subclasses say whether a retry can help."""

    status = 502


class UpstreamValidationError(UpstreamError):
    """Raised when the backend rejects the request as invalid (TGI 422, OpenAI 400)."""

    status = 422


class UpstreamGenerationError(UpstreamError):
    """Raised when the backend fails while generating (TGI 424 `generation`)."""

    status = 424


class UpstreamOverloadedError(UpstreamError):
    """Raised when the backend is overloaded (429); retried with backoff."""

    status = 429
    retryable = True


class UpstreamUnavailableError(UpstreamError):
    """Raised when the backend cannot be reached, resets the connection, or answers 503."""

    status = 503
    retryable = True


class UpstreamTimeoutError(UpstreamError):
    """Raised when the backend does not answer within the configured timeout."""

    status = 504
    retryable = True


class UpstreamShardError(UpstreamError):
    """Raised when TGI reports a shard error (424 without `generation`, or 504 from the router)."""

    status = 503
    retryable = True


class UpstreamProtocolError(UpstreamError):
    """Raised when the backend answers a 5xx or something that is not its documented protocol."""

    status = 502
