"""A real S3 HTTP endpoint for tests: moto's server app behind a counting, fault-injecting layer.

Owns: running moto's WSGI app with werkzeug on 127.0.0.1 (threaded, daemon thread), naming the
S3 operation of every request, counting those operations, and injecting the faults a real S3
produces but moto never does (500 InternalError, 503 SlowDown, a TCP reset before or after the
request took effect). Requests that match no fault rule reach moto untouched.

Control plane (JSON over HTTP, so a test can watch a separate uploader process). Its prefix can
never collide with a bucket because bucket names cannot start with ``_``::

    GET  /_reelflow/stats         {"UploadPart": 3, "CreateMultipartUpload": 1, ...}
    POST /_reelflow/reset-stats   zero the counts and the request log
    GET  /_reelflow/requests      {"requests": [{"op", "bucket", "key", "part_number", ...}]}
    GET  /_reelflow/faults        the active rules and how often each fired
    POST /_reelflow/faults        {"rules": [{"op": "UploadPart", "part_numbers": [2, 5],
                                             "kind": "500", "times": 1}]}   ([] clears)
                                  a rule with "rate": 0.1 fires on ~10 % of its requests
                                  (seeded: {"rules": [...], "seed": 7}), at most ``times``
    GET  /_reelflow/bytes         {"UploadPart": 15728640, ...} request body bytes per
                                  operation as they arrived (?bucket=NAME for one bucket)
    POST /_reelflow/latency       {"seconds": 0.03} before every S3 request (0 turns it off)
    POST /_reelflow/reset         forget all buckets (moto's /moto-api/reset), counts and rules

Fault kinds: ``"500"`` and ``"503"`` answer an S3 XML error without touching moto; ``"reset"``
reads the body and aborts the connection (RST) without touching moto; ``"reset-after"`` lets moto
apply the request, then aborts, so the object or part exists although the client saw no reply.
A rule fires ``times`` times per listed part number (or ``times`` times in all when it lists
none), then stays quiet; with a ``rate`` it fires on that fraction of its requests (seeded dice),
still at most ``times``. ``"*"`` as ``op`` matches every S3 operation.

moto keeps its state in process-wide globals: every server in one process sees the same buckets.
Run ``python -m tests.support.s3server --port N`` for a standalone endpoint (benchmarks).

Must not: change what moto answers to requests it forwards, or hold any reelflow logic.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import itertools
import json
import os
import random
import signal
import socket
import struct
import threading
import time
import urllib.request
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from moto.moto_server.werkzeug_app import MotoRequestHandler
from moto.server import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import BaseWSGIServer, make_server

if TYPE_CHECKING:
    from botocore.config import Config
    from mypy_boto3_s3 import S3Client

CONTROL_PREFIX = "/_reelflow/"
REGION = "us-east-1"
ACCESS_KEY = "testing"
SECRET_KEY = "testing"
FAULT_KINDS = frozenset({"500", "503", "reset", "reset-after"})
MAX_RECORDS = 100_000
_READ_CHUNK_BYTES = 1024 * 1024

_ERRORS = {
    "500": ("500 Internal Server Error", "InternalError", "We encountered an internal error."),
    "503": ("503 Slow Down", "SlowDown", "Please reduce your request rate."),
    "bad-digest": (
        "400 Bad Request",
        "BadDigest",
        "The SHA256 you specified did not match the calculated checksum.",
    ),
}


@dataclass(frozen=True)
class S3Request:
    """What the middleware learned about one request before deciding its fate."""

    op: str
    method: str
    bucket: str
    key: str
    part_number: int | None
    upload_id: str | None
    bytes_in: int


@dataclass(frozen=True)
class RequestRecord:
    """One finished request: its operation, target and how it ended (status or fault)."""

    op: str
    method: str
    bucket: str
    key: str
    part_number: int | None
    upload_id: str | None
    bytes_in: int
    status: int | None
    fault: str | None


@dataclass(frozen=True)
class FaultRule:
    """Fail ``times`` requests of ``op`` per part number in ``part_numbers`` (or in all); with
    ``rate``, only that fraction of the matching requests (seeded dice), up to ``times``."""

    op: str
    kind: str
    part_numbers: frozenset[int] | None = None
    times: int = 1
    rate: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"kind must be one of {sorted(FAULT_KINDS)}, not {self.kind!r}")
        if self.times < 1:
            raise ValueError("times must be at least 1")
        if self.rate is not None and not 0.0 < self.rate <= 1.0:
            raise ValueError("rate must be in (0, 1]")

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FaultRule:
        unknown = set(data) - {"op", "kind", "part_numbers", "times", "rate"}
        if unknown:
            raise ValueError(f"unknown fault rule fields: {sorted(unknown)}")
        numbers = data.get("part_numbers")
        return cls(
            op=str(data["op"]),
            kind=str(data["kind"]),
            part_numbers=None if numbers is None else frozenset(int(n) for n in numbers),
            times=int(data.get("times", 1)),
            rate=None if data.get("rate") is None else float(data["rate"]),
        )

    def to_json(self) -> dict[str, Any]:
        numbers = None if self.part_numbers is None else sorted(self.part_numbers)
        shown = {"op": self.op, "kind": self.kind, "part_numbers": numbers, "times": self.times}
        return shown if self.rate is None else {**shown, "rate": self.rate}

    def matches(self, request: S3Request) -> bool:
        if self.op not in ("*", request.op):
            return False
        return self.part_numbers is None or request.part_number in self.part_numbers


class ServerState:
    """Counts, request log and fault rules; shared by the server threads, hence the lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._records: deque[RequestRecord] = deque(maxlen=MAX_RECORDS)
        self._rules: list[FaultRule] = []
        self._fired: list[Counter[int | None]] = []
        self._bytes: Counter[tuple[str, str]] = Counter()
        self._rng = random.Random()
        self.latency_s = 0.0

    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def reset_stats(self) -> None:
        with self._lock:
            self._counts.clear()
            self._records.clear()
            self._bytes.clear()

    def bytes_in(self, bucket: str | None = None) -> dict[str, int]:
        """Request body bytes per operation, counted on arrival (a request cut off by a killed
        client counts in full: an upper bound on what reached the server)."""
        with self._lock:
            totals: Counter[str] = Counter()
            for (b, op), n in self._bytes.items():
                if bucket in (None, b):
                    totals[op] += n
            return dict(totals)

    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._records)

    def set_faults(
        self, rules: Iterable[FaultRule | Mapping[str, Any]], *, seed: int | None = None
    ) -> None:
        parsed = [r if isinstance(r, FaultRule) else FaultRule.from_json(r) for r in rules]
        with self._lock:
            self._rules = parsed
            self._fired = [Counter() for _ in parsed]
            self._rng = random.Random(seed)

    def faults(self) -> list[dict[str, Any]]:
        with self._lock:
            return [
                {**rule.to_json(), "fired": sum(fired.values())}
                for rule, fired in zip(self._rules, self._fired, strict=True)
            ]

    def count(self, request: S3Request) -> None:
        with self._lock:
            self._counts[request.op] += 1
            self._bytes[(request.bucket, request.op)] += request.bytes_in

    def take_fault(self, request: S3Request) -> FaultRule | None:
        """Return the first rule that still has a fault left for ``request``, and spend it."""
        with self._lock:
            for rule, fired in zip(self._rules, self._fired, strict=True):
                if not rule.matches(request) or fired[request.part_number] >= rule.times:
                    continue
                if rule.rate is not None and self._rng.random() >= rule.rate:
                    continue
                fired[request.part_number] += 1
                return rule
        return None

    def record(self, request: S3Request, *, status: int | None, fault: str | None) -> None:
        with self._lock:
            self._records.append(RequestRecord(**asdict(request), status=status, fault=fault))


def classify(environ: WSGIEnvironment) -> S3Request:
    """Name the S3 operation of a path-style request (the only style the test client uses)."""
    method = environ["REQUEST_METHOD"].upper()
    query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    bucket, _, key = environ.get("PATH_INFO", "/").lstrip("/").partition("/")
    part = query.get("partNumber", [None])[0]
    upload_id = query.get("uploadId", [None])[0]
    copy = "HTTP_X_AMZ_COPY_SOURCE" in environ
    # aws-chunked bodies carry signatures/trailers; the decoded length is the payload size.
    length = environ.get("HTTP_X_AMZ_DECODED_CONTENT_LENGTH") or environ.get("CONTENT_LENGTH")

    if not bucket:
        op = "ListBuckets" if method == "GET" else f"Service{method.title()}"
    elif not key:
        op = _bucket_op(method, query)
    elif method == "PUT":
        if part is not None and upload_id is not None:
            op = "UploadPartCopy" if copy else "UploadPart"
        elif copy:
            op = "CopyObject"
        else:
            op = _subresource_op("PutObject", query)
    elif method == "POST":
        if "uploads" in query:
            op = "CreateMultipartUpload"
        elif upload_id is not None:
            op = "CompleteMultipartUpload"
        else:
            op = "RestoreObject" if "restore" in query else "PostObject"
    elif method == "GET":
        op = "ListParts" if upload_id is not None else _subresource_op("GetObject", query)
    elif method == "HEAD":
        op = "HeadObject"
    elif method == "DELETE":
        op = "AbortMultipartUpload" if upload_id is not None else "DeleteObject"
    else:
        op = f"Object{method.title()}"
    return S3Request(
        op=op,
        method=method,
        bucket=bucket,
        key=key,
        part_number=int(part) if part and part.isdigit() else None,
        upload_id=upload_id,
        bytes_in=int(length) if length and length.isdigit() else 0,
    )


_BUCKET_SUBRESOURCES = {
    "uploads": "MultipartUploads",
    "versioning": "BucketVersioning",
    "location": "BucketLocation",
    "policy": "BucketPolicy",
    "cors": "BucketCors",
    "lifecycle": "BucketLifecycleConfiguration",
    "notification": "BucketNotificationConfiguration",
    "tagging": "BucketTagging",
    "acl": "BucketAcl",
    "encryption": "BucketEncryption",
    "versions": "ObjectVersions",
}


def _bucket_op(method: str, query: Mapping[str, list[str]]) -> str:
    sub = next((_BUCKET_SUBRESOURCES[q] for q in query if q in _BUCKET_SUBRESOURCES), None)
    if method == "GET":
        if sub in ("MultipartUploads", "ObjectVersions"):
            return f"List{sub}"
        if sub:
            return f"Get{sub}"
        return "ListObjectsV2" if query.get("list-type") == ["2"] else "ListObjects"
    if method == "PUT":
        return f"Put{sub}" if sub else "CreateBucket"
    if method == "DELETE":
        return f"Delete{sub}" if sub else "DeleteBucket"
    if method == "HEAD":
        return "HeadBucket"
    if method == "POST" and "delete" in query:
        return "DeleteObjects"
    return f"Bucket{method.title()}"


def _subresource_op(base: str, query: Mapping[str, list[str]]) -> str:
    verb = base.removesuffix("Object")
    for sub, name in (("tagging", "Tagging"), ("acl", "Acl"), ("attributes", "Attributes")):
        if sub in query:
            return f"{verb}Object{name}"
    return base


class S3FaultMiddleware:
    """WSGI layer in front of moto: counts every S3 request, fails the ones a rule selects."""

    def __init__(
        self, app: WSGIApplication, state: ServerState, *, verify_checksums: bool = True
    ) -> None:
        self.app = app
        self.state = state
        self.verify_checksums = verify_checksums
        self._request_ids = itertools.count(1)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "").startswith(CONTROL_PREFIX):
            return self._control(environ, start_response)
        request = classify(environ)
        self.state.count(request)
        if self.state.latency_s > 0:
            time.sleep(self.state.latency_s)  # a slow link: widens every step for kill tests
        rule = self.state.take_fault(request)
        if rule is None:
            if (
                self.verify_checksums
                and request.op == "UploadPart"
                and environ.get("HTTP_X_AMZ_CHECKSUM_SHA256")
            ):
                return self._verify_part_checksum(environ, start_response, request)
            return self._forward(environ, start_response, request)
        self.state.record(request, status=None, fault=rule.kind)
        if rule.kind == "reset-after":
            for _ in self._drain_app(environ):
                pass
            _abort_connection(environ)
        _read_body(environ)
        if rule.kind == "reset":
            _abort_connection(environ)
        return self._error(environ, start_response, rule.kind)

    def _forward(
        self, environ: WSGIEnvironment, start_response: StartResponse, request: S3Request
    ) -> Iterable[bytes]:
        def recording_start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Any:
            self.state.record(request, status=int(status.split()[0]), fault=None)
            return start_response(status, headers, exc_info)

        return self.app(environ, recording_start_response)

    def _verify_part_checksum(
        self, environ: WSGIEnvironment, start_response: StartResponse, request: S3Request
    ) -> Iterable[bytes]:
        """Real S3 refuses a part whose body does not match x-amz-checksum-sha256; moto 5.2
        accepts it, so this layer does what S3 does before moto sees the part."""
        body = _read_body(environ)
        actual = base64.b64encode(hashlib.sha256(body).digest()).decode()
        if actual != environ["HTTP_X_AMZ_CHECKSUM_SHA256"]:
            self.state.record(request, status=400, fault=None)
            return self._error(environ, start_response, "bad-digest")
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        environ.pop("wsgi.input_terminated", None)
        return self._forward(environ, start_response, request)

    def _drain_app(self, environ: WSGIEnvironment) -> Iterator[bytes]:
        # moto applies the request while building its response; the reply is then dropped.
        body = self.app(environ, lambda status, headers, exc_info=None: lambda data: None)
        try:
            yield from body
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()

    def _error(
        self, environ: WSGIEnvironment, start_response: StartResponse, kind: str
    ) -> list[bytes]:
        status, code, message = _ERRORS[kind]
        request_id = f"REELFLOW{next(self._request_ids):012d}"
        xml = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{message}</Message>"
            f"<Resource>{_xml_escape(environ.get('PATH_INFO', ''))}</Resource>"
            f"<RequestId>{request_id}</RequestId></Error>"
        ).encode()
        # HEAD replies carry no body, so botocore reads the error from the status alone.
        body = b"" if environ["REQUEST_METHOD"].upper() == "HEAD" else xml
        headers = [
            ("Content-Type", "application/xml"),
            ("Content-Length", str(len(body))),
            ("x-amz-request-id", request_id),
        ]
        start_response(status, headers)
        return [body]

    def _control(self, environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        method = environ["REQUEST_METHOD"].upper()
        action = environ["PATH_INFO"][len(CONTROL_PREFIX) :].strip("/")
        try:
            payload: Any
            if (method, action) == ("GET", "stats"):
                payload = self.state.stats()
            elif (method, action) == ("POST", "reset-stats"):
                self.state.reset_stats()
                payload = {}
            elif (method, action) == ("GET", "requests"):
                payload = {"requests": [asdict(r) for r in self.state.requests()]}
            elif (method, action) == ("GET", "faults"):
                payload = {"rules": self.state.faults()}
            elif (method, action) == ("POST", "faults"):
                body = json.loads(_read_body(environ) or b"{}")
                self.state.set_faults(body.get("rules") or [], seed=body.get("seed"))
                payload = {"rules": self.state.faults()}
            elif (method, action) == ("GET", "bytes"):
                query = parse_qs(environ.get("QUERY_STRING", ""))
                payload = self.state.bytes_in(query.get("bucket", [None])[0])
            elif (method, action) == ("POST", "latency"):
                body = json.loads(_read_body(environ) or b"{}")
                self.state.latency_s = max(0.0, float(body.get("seconds", 0.0)))
                payload = {"seconds": self.state.latency_s}
            elif (method, action) == ("POST", "reset"):
                self._reset_moto(environ)
                self.state.reset_stats()
                self.state.set_faults([])
                self.state.latency_s = 0.0
                payload = {}
            else:
                return _json_reply(start_response, "404 Not Found", {"error": "unknown"})
        except (ValueError, KeyError, TypeError) as exc:
            return _json_reply(start_response, "400 Bad Request", {"error": str(exc)})
        return _json_reply(start_response, "200 OK", payload)

    def _reset_moto(self, environ: WSGIEnvironment) -> None:
        # moto's own reset endpoint, called in-process rather than over a second connection.
        reset_environ = {
            **environ,
            "REQUEST_METHOD": "POST",
            "PATH_INFO": "/moto-api/reset",
            "QUERY_STRING": "",
            "CONTENT_LENGTH": "0",
            "wsgi.input": io.BytesIO(b""),
        }
        for _ in self._drain_app(reset_environ):
            pass


class _ConnectionAborted(ConnectionResetError):
    """Raised out of the app after the socket was reset; werkzeug treats it as a dropped peer."""


class _RequestHandler(MotoRequestHandler):
    def connection_dropped(
        self, error: BaseException, environ: WSGIEnvironment | None = None
    ) -> None:
        # Keep-alive would make the handler read the next request from the dead socket.
        self.close_connection = True

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # One access-log line per request drowns pytest output; errors still go to log_error.
        pass


def _abort_connection(environ: WSGIEnvironment) -> None:
    sock: socket.socket = environ["werkzeug.socket"]
    # Linger on with a zero timeout makes close() send RST instead of FIN: the client sees
    # ECONNRESET, as when a load balancer or a crashed server drops a connection.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    # socket.close() would not close the descriptor while werkzeug's rfile/wfile still hold it,
    # and os.close() would free the number for reuse by another thread's socket. dup2 closes
    # the TCP socket and parks the same number on /dev/null until werkzeug closes it.
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        os.dup2(devnull, sock.fileno())
    finally:
        os.close(devnull)
    raise _ConnectionAborted("connection reset by fault rule")


def _read_body(environ: WSGIEnvironment) -> bytes:
    stream = environ["wsgi.input"]
    if environ.get("wsgi.input_terminated"):
        return bytes(stream.read())
    remaining = int(environ.get("CONTENT_LENGTH") or 0)
    chunks = []
    while remaining > 0:
        chunk = stream.read(min(remaining, _READ_CHUNK_BYTES))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _json_reply(start_response: StartResponse, status: str, payload: Any) -> list[bytes]:
    body = json.dumps(payload).encode()
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def make_client(endpoint_url: str, *, config: Config | None = None) -> S3Client:
    """A boto3 S3 client for ``endpoint_url``: us-east-1, dummy credentials, path-style."""
    import boto3
    from botocore.config import Config

    base = Config(s3={"addressing_style": "path"})
    # An explicit session ignores AWS_PROFILE and ~/.aws, which could point at a real account.
    session = boto3.session.Session(
        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, region_name=REGION
    )
    return session.client(
        "s3",
        endpoint_url=endpoint_url,
        config=base.merge(config) if config is not None else base,
    )


class S3Control:
    """The control plane of a server running elsewhere (another process), over HTTP."""

    def __init__(self, endpoint_url: str) -> None:
        self.endpoint_url = endpoint_url.rstrip("/")

    def stats(self) -> dict[str, int]:
        return dict(self._call("GET", "stats"))

    def reset_stats(self) -> None:
        self._call("POST", "reset-stats")

    def requests(self) -> list[RequestRecord]:
        return [RequestRecord(**r) for r in self._call("GET", "requests")["requests"]]

    def set_faults(
        self, rules: Sequence[FaultRule | Mapping[str, Any]], *, seed: int | None = None
    ) -> None:
        body = [r.to_json() if isinstance(r, FaultRule) else dict(r) for r in rules]
        self._call("POST", "faults", {"rules": body, "seed": seed})

    def faults(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "faults")["rules"])

    def bytes_in(self, bucket: str | None = None) -> dict[str, int]:
        query = f"?{urlencode({'bucket': bucket})}" if bucket else ""
        return dict(self._call("GET", f"bytes{query}"))

    def set_latency(self, seconds: float) -> None:
        self._call("POST", "latency", {"seconds": seconds})

    def reset(self) -> None:
        self._call("POST", "reset")

    def client(self, *, config: Config | None = None) -> S3Client:
        return make_client(self.endpoint_url, config=config)

    def _call(self, method: str, action: str, payload: Any = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(
            f"{self.endpoint_url}{CONTROL_PREFIX}{action}", data=data, method=method
        )
        req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())


class S3TestServer(S3Control):
    """moto's S3 on 127.0.0.1 with counting and faults; a context manager.

    ``with S3TestServer() as s3: s3.client().create_bucket(Bucket="b"); s3.stats()``. Control
    calls from Python read the shared state directly; other processes use ``/_reelflow/``.
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, *, verify_checksums: bool = True
    ) -> None:
        super().__init__(f"http://{host}:{port}")
        self.host = host
        self.port = port
        self.state = ServerState()
        self.verify_checksums = verify_checksums
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> S3TestServer:
        if self._server is not None:
            raise RuntimeError("server already started")
        app = S3FaultMiddleware(
            DomainDispatcherApplication(create_backend_app),
            self.state,
            verify_checksums=self.verify_checksums,
        )
        server = make_server(
            self.host, self.port, app, threaded=True, request_handler=_RequestHandler
        )
        self._server = server
        self.port = server.server_address[1]
        self.endpoint_url = f"http://{self.host}:{self.port}"
        self._thread = threading.Thread(
            target=server.serve_forever, name=f"s3-test-server-{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None
        self._thread = None

    def __enter__(self) -> S3TestServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stats(self) -> dict[str, int]:
        return self.state.stats()

    def reset_stats(self) -> None:
        self.state.reset_stats()

    def requests(self) -> list[RequestRecord]:
        return self.state.requests()

    def set_faults(
        self, rules: Sequence[FaultRule | Mapping[str, Any]], *, seed: int | None = None
    ) -> None:
        self.state.set_faults(rules, seed=seed)

    def faults(self) -> list[dict[str, Any]]:
        return self.state.faults()

    def bytes_in(self, bucket: str | None = None) -> dict[str, int]:
        return self.state.bytes_in(bucket)

    def set_latency(self, seconds: float) -> None:
        self.state.latency_s = max(0.0, seconds)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.s3server", description="Serve moto S3 with fault rules."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--no-verify-checksums",
        action="store_true",
        help="skip the BadDigest check (benchmarks: real S3 spends that CPU, not this machine)",
    )
    args = parser.parse_args(argv)

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    with S3TestServer(args.host, args.port, verify_checksums=not args.no_verify_checksums) as s3:
        # The first stdout line is the endpoint; a benchmark reads it to find a port-0 server.
        print(s3.endpoint_url, flush=True)
        try:
            while True:
                signal.pause()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
