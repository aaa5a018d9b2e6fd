"""HTTP GETs for URL sources that cannot be turned against the worker's network (issue 8 §2).

Owns one ``requests`` session whose connections are made to addresses ``reelflow.netguard``
checked (the name is resolved once, by the injected resolver, and the socket goes to exactly
those addresses: no second lookup to rebind), with environment proxies and ``.netrc`` ignored
(``trust_env=False``), content encodings refused (``Accept-Encoding: identity``) and redirects
followed here, at most ``netguard.MAX_REDIRECTS`` hops, each hop checked again.

Foreign errors are mapped here; messages name the *public* form of a URL only (no userinfo, no
query values), because requests' own messages quote the full URL.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urljoin

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from reelflow import credentials, netguard
from reelflow.errors import SourceRefusedError, TransientStorageError

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 60.0
USER_AGENT = "reelflow-source-reader/1"

Connector = Callable[[str, int, float | None, Any, Sequence[Any] | None], socket.socket]


def public_url(url: str) -> str:
    """``url`` without userinfo and with every query value replaced (one rule for the whole
    product: ``reelflow.credentials.public_url``)."""
    return credentials.public_url(url)


def _guarded_classes(connect: Connector) -> dict[str, type[HTTPConnectionPool]]:
    class Conn(HTTPConnection):
        def _new_conn(self) -> socket.socket:
            return connect(
                self.host, self.port, self.timeout, self.source_address, self.socket_options
            )  # type: ignore[arg-type]

    class TLSConn(HTTPSConnection):
        def _new_conn(self) -> socket.socket:
            # TLS still verifies the certificate against the host name (self.host), not the IP.
            return connect(
                self.host, self.port, self.timeout, self.source_address, self.socket_options
            )  # type: ignore[arg-type]

    class Pool(HTTPConnectionPool):
        ConnectionCls = Conn

    class TLSPool(HTTPSConnectionPool):
        ConnectionCls = TLSConn

    return {"http": Pool, "https": TLSPool}


class _GuardedAdapter(HTTPAdapter):
    def __init__(self, pools: dict[str, type[HTTPConnectionPool]]) -> None:
        self._pools = pools
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = self._pools  # type: ignore[assignment]


class GuardedHTTP:
    """GET with redirects followed here and every connection's address checked."""

    def __init__(
        self,
        *,
        allowlist: netguard.Allowlist = frozenset(),
        resolver: netguard.Resolver = netguard.system_resolver,
    ) -> None:
        self.allowlist, self.resolver = allowlist, resolver
        self.session = requests.Session()
        self.session.trust_env = False  # no env proxies or .netrc: they would bypass the check
        adapter = _GuardedAdapter(_guarded_classes(self._connect))
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def _connect(
        self,
        host: str,
        port: int,
        timeout: float | None,
        source_address: Any,
        socket_options: Sequence[Any] | None,
    ) -> socket.socket:
        try:
            addresses = netguard.check_addresses(host, port, self.allowlist, self.resolver)
        except OSError as exc:  # the resolver failed (no such name, DNS down)
            raise TransientStorageError(f"cannot resolve {host}: {exc.strerror or exc}") from exc
        last: OSError | None = None
        for address in addresses:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                for opt in socket_options or ():
                    sock.setsockopt(*opt)
                if timeout is not None:
                    sock.settimeout(timeout)
                if source_address:
                    sock.bind(source_address)
                sock.connect((address, port))
                return sock
            except OSError as exc:
                sock.close()
                last = exc
        assert last is not None
        raise last

    def get(
        self,
        url: str,
        headers: Mapping[str, str],
        *,
        timeout: tuple[float, float] = (CONNECT_TIMEOUT_S, READ_TIMEOUT_S),
    ) -> tuple[requests.Response, str]:
        """The first non-redirect response (streamed) and the URL that gave it."""
        sent = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity", **headers}
        current = url
        for _hop in range(netguard.MAX_REDIRECTS + 1):
            netguard.check_url(current)
            try:
                resp = self.session.get(
                    current, headers=sent, stream=True, allow_redirects=False, timeout=timeout
                )
            except requests.RequestException as exc:
                raise TransientStorageError(
                    f"cannot reach {public_url(current)}: {type(exc).__name__}"
                ) from exc
            if not resp.is_redirect:
                return resp, current
            location = resp.headers.get("Location", "")
            resp.close()
            current = urljoin(current, location)
        raise SourceRefusedError(
            f"{public_url(url)} redirects more than {netguard.MAX_REDIRECTS} times",
            reason="too_many_redirects",
        )
