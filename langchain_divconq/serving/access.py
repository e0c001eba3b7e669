"""Who may talk to ``divconq serve``: API key, Host and Origin checks, JSON-only POSTs.

A server on 127.0.0.1 is still reachable from any web page the user opens: the
page can POST ``text/plain`` (no CORS preflight), or rebind its own domain name
to 127.0.0.1 (DNS rebinding) and then read the answers. :class:`AccessPolicy`
closes those doors: a POST must be ``application/json`` (which a page can only
send after a preflight this server never approves), the ``Host`` header must be
a name the server is meant to be reached by, and a request that carries an
``Origin`` header (browsers add it) must come from an allowed origin. With an
API key set, every request except ``GET /health`` must also send it as
``Authorization: Bearer <key>``.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from langchain_divconq.serving.protocol import APIError

__all__ = ["LOCAL_HOSTS", "OPEN_PATHS", "AccessPolicy", "host_name"]

LOCAL_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
"""Host names always accepted unless the Host check is off."""

OPEN_PATHS: frozenset[str] = frozenset({"/health"})
"""Paths served without the API key (a load balancer's probe; it shows counters only)."""

WILDCARD_BINDS: frozenset[str] = frozenset({"0.0.0.0", "::", ""})
"""Bind addresses that listen on every interface, so the server cannot know its names."""


def host_name(host_header: str) -> str:
    """Return the host part of a ``Host`` header, lowercased, without port or brackets.

    Example:
        >>> host_name("[::1]:8000"), host_name("LocalHost:80"), host_name("example.com")
        ('::1', 'localhost', 'example.com')

    """
    value = host_header.strip().lower()
    if value.startswith("["):  # an IPv6 literal: [::1]:8000
        return value[1:].split("]", 1)[0]
    if value.count(":") == 1:
        return value.split(":", 1)[0]
    return value


@dataclass(frozen=True)
class AccessPolicy:
    """The checks every request passes before it is read (see the module doc).

    Example:
        >>> policy = AccessPolicy(api_key="k")
        >>> policy.check("GET", "/v1/models", {"host": "localhost", "authorization": "Bearer k"})

    """

    api_key: str | None = None
    """The key clients must send as ``Authorization: Bearer <key>``; None: no key needed."""

    allowed_hosts: Sequence[str] | None = LOCAL_HOSTS
    """Host names (no port) accepted in the ``Host`` header besides :data:`LOCAL_HOSTS`;
    None or a ``"*"`` entry turns the Host check off."""

    allowed_origins: Sequence[str] = field(default_factory=tuple)
    """Browser origins (``https://app.example``) allowed to call; ``"*"`` allows any.
    Requests without an ``Origin`` header (SDKs, curl) are not affected."""

    def check(self, method: str, path: str, headers: Mapping[str, str]) -> None:
        """Raise :class:`APIError` for a request this policy refuses.

        Args:
            method: The HTTP method.
            path: The URL path (``/health`` needs no key).
            headers: The request headers, looked up by lowercase name.

        Raises:
            APIError: 403 ``invalid_host`` or ``invalid_origin``, 401 ``invalid_api_key``,
                415 ``unsupported_media_type``.

        """
        self._check_host(headers.get("host", ""))
        self._check_origin(headers.get("origin"))
        if self.api_key is not None and path not in OPEN_PATHS:
            self._check_key(headers.get("authorization", ""), self.api_key)
        if method == "POST":
            media = headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if media != "application/json":
                msg = (
                    f"POST bodies must be sent as Content-Type: application/json, got "
                    f"{media or 'no Content-Type'!r}."
                )
                raise APIError(415, msg, code="unsupported_media_type")

    def _check_host(self, header: str) -> None:
        if self.allowed_hosts is None or "*" in self.allowed_hosts:
            return
        name = host_name(header)
        allowed = {h.lower() for h in (*LOCAL_HOSTS, *self.allowed_hosts)}
        if name not in allowed:
            msg = (
                f"The Host header {header!r} is not a name this server answers to "
                f"({', '.join(sorted(allowed))}). Start the server with --allowed-hosts "
                f"{name or '<name>'} to reach it by that name."
            )
            raise APIError(403, msg, type="permission_error", code="invalid_host")

    def _check_origin(self, origin: str | None) -> None:
        if origin is None or "*" in self.allowed_origins or origin in self.allowed_origins:
            return
        msg = (
            f"Requests from the web origin {origin!r} are not allowed. Start the server with "
            f"--allowed-origins {origin} to let pages from it call this server."
        )
        raise APIError(403, msg, type="permission_error", code="invalid_origin")

    @staticmethod
    def _check_key(authorization: str, key: str) -> None:
        scheme, _, token = authorization.partition(" ")
        # compare_digest: the time taken does not tell how much of a guess was right.
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), key.encode()
        ):
            msg = (
                "Missing or incorrect API key. Send it as 'Authorization: Bearer <key>' "
                "(the key the server was started with: --api-key or DIVCONQ_API_KEY)."
            )
            raise APIError(401, msg, code="invalid_api_key")
