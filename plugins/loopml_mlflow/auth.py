"""Credentials for a remote MLflow server, handed to MLflow's client in this process only.

MLflow reads credentials from ``MLFLOW_TRACKING_*`` environment variables, which every child
process would inherit (a TorchServe JVM, a git call, a worker). Instead, loopml registers a request
header provider, MLflow's public extension point (entry point group
``mlflow.request_header_provider``), that adds the ``Authorization`` header to the REST calls of
this process. The secret lives in this module's memory, never in the environment.
"""

from __future__ import annotations

import base64

from mlflow.tracking.request_header.abstract_request_header_provider import RequestHeaderProvider

_authorization: dict[str, str] = {}  # tracking URI -> Authorization header value


def use_credentials(tracking_uri: str, *, token: str | None = None, username: str | None = None,
                    password: str | None = None) -> None:
    """Authenticate this process's MLflow REST calls (bearer token, or basic auth)."""
    if token:
        value = f"Bearer {token}"
    elif username is not None:
        value = "Basic " + base64.b64encode(f"{username}:{password or ''}".encode()).decode()
    else:
        return
    others = {v for uri, v in _authorization.items() if uri != tracking_uri}
    if others and value not in others:
        raise ValueError("two MLflow servers with different credentials in one process: MLflow's client "
                         "sends one Authorization header to every server; use one tracking server")
    _authorization[tracking_uri] = value


class LoopmlCredentials(RequestHeaderProvider):
    """MLflow's hook for request headers: the credentials loopml was configured with, if any."""

    def in_context(self) -> bool:
        return bool(_authorization)

    def request_headers(self) -> dict[str, str]:
        return {"Authorization": next(iter(_authorization.values()))} if _authorization else {}
