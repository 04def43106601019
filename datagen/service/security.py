"""Who may talk to a replica: an optional shared token on every RPC, optional TLS (mutual when a CA is given).

Both sides import this module. The token travels as `authorization: Bearer <token>` metadata; a wrong or
missing token gets UNAUTHENTICATED before any handler runs, health and reflection included (probes must
send the header, e.g. `grpc_health_probe -rpc-header "authorization: Bearer $TOKEN"`). Refused calls are
counted by reason and logged, at most once per reason every few seconds (a scanner or a misconfigured
client must not flood the log), with how many came since the last line.
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import grpc

from common.env import DATAGEN_TOKEN

MISSING_TOKEN, WRONG_TOKEN = "missing token", "wrong token"  # why a call was refused

log = logging.getLogger(__name__)


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
    """Rejects every call that does not carry the shared token; `on_reject(why)` counts each, and the log
    says so at most once per `log_every_s` per reason."""

    def __init__(self, token: str, on_reject: Callable[[str], object] = lambda why: None, log_every_s: float = 10.0):
        self._expected = f"Bearer {token}".encode()
        self._on_reject, self._log_every_s = on_reject, log_every_s
        self._reported: dict[str, tuple[float, int]] = {}  # reason -> (last logged, refused since)
        self._lock = threading.Lock()

    def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        # Only keys ending in "-bin" carry bytes: the token's is text.
        sent = cast(str, dict(details.invocation_metadata or ()).get("authorization", ""))
        if handler is None or hmac.compare_digest(sent.encode(), self._expected):
            return handler
        why = MISSING_TOKEN if not sent else WRONG_TOKEN
        return _rejecting(handler, why, lambda peer: self._refused(why, details.method, peer))

    def _refused(self, why: str, method: str, peer: str) -> None:
        self._on_reject(why)
        now = time.monotonic()
        with self._lock:
            last, since = self._reported.get(why, (-math.inf, 0))
            if now - last < self._log_every_s:
                self._reported[why] = (last, since + 1)
                return
            self._reported[why] = (now, 0)
        log.warning(
            "refused a call: %s",
            why,
            extra={"reason": why, "method": method, "peer": peer, "more_since_last_report": since},
        )


def _rejecting(handler: grpc.RpcMethodHandler, why: str, refused: Callable[[str], None]) -> grpc.RpcMethodHandler:
    """A handler of the same streaming kind as `handler` that reports `refused(peer)` and fails with UNAUTHENTICATED."""

    def reject(_request: Any, context: grpc.ServicerContext) -> Any:
        refused(context.peer())
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
