"""Who may talk to a replica: an optional shared token on every RPC, optional TLS (mutual when a CA is given).

Both sides import this module. The token travels as `authorization: Bearer <token>` metadata; a wrong or
missing token gets UNAUTHENTICATED before any handler runs, health and reflection included (probes must
send the header, e.g. `grpc_health_probe -rpc-header "authorization: Bearer $TOKEN"`).
"""

from __future__ import annotations

import dataclasses
import hmac
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import grpc

from datagen.env import DATAGEN_TOKEN


def resolve_token(
    token: str | None = None, token_file: str | None = None, consequence: str = "every RPC carries the shared token"
) -> str | None:
    """The token from the argument, else a file, else $CTP_DATAGEN_TOKEN (logged with `consequence`); None: no token."""
    if token:
        return token
    if token_file:
        return Path(token_file).read_text().strip() or None
    return DATAGEN_TOKEN.resolve(None, consequence)


def token_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


class TokenInterceptor(grpc.ServerInterceptor):
    """Rejects every call that does not carry the shared token."""

    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        # Only keys ending in "-bin" carry bytes: the token's is text.
        sent = cast(str, dict(details.invocation_metadata or ()).get("authorization", ""))
        if handler is None or hmac.compare_digest(sent.encode(), self._expected):
            return handler
        return _rejecting(handler, "missing token" if not sent else "wrong token")


def _rejecting(handler: grpc.RpcMethodHandler, why: str) -> grpc.RpcMethodHandler:
    """A handler of the same streaming kind as `handler` that fails with UNAUTHENTICATED."""

    def reject(_request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, f"{why}: send 'authorization: Bearer <token>' metadata")

    kind = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(handler.request_streaming, handler.response_streaming)]
    return kind(
        reject, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
    )


@dataclasses.dataclass(frozen=True)
class TlsFiles:
    """PEM files. Server: cert+key, plus ca to require client certificates (mTLS).
    Client: ca to verify the server, plus cert+key to present one."""

    cert: str | None = None
    key: str | None = None
    ca: str | None = None

    def __bool__(self) -> bool:
        return any((self.cert, self.key, self.ca))

    def server_credentials(self) -> grpc.ServerCredentials:
        if not (self.cert and self.key):
            raise ValueError("TLS on a replica needs both --tls-cert and --tls-key")
        ca = _read(self.ca)
        return grpc.ssl_server_credentials(
            [(Path(self.key).read_bytes(), Path(self.cert).read_bytes())],
            root_certificates=ca,
            require_client_auth=ca is not None,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        if bool(self.cert) != bool(self.key):
            raise ValueError("a client certificate needs both --tls-cert and --tls-key")
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca), private_key=_read(self.key), certificate_chain=_read(self.cert)
        )


def _read(path: str | None) -> bytes | None:
    return Path(path).read_bytes() if path else None
