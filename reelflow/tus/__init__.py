"""The pure rules of the tus 1.0.0 resumable upload protocol, as the gateway applies them.

Owns: the protocol's constants (version, extensions, checksum algorithms, the CORS header
lists), parsing and checking of every tus request header (``Tus-Resumable``,
``X-HTTP-Method-Override``, ``Upload-Length`` / ``Upload-Defer-Length``, ``Upload-Offset``,
``Upload-Metadata``, ``Upload-Checksum``, ``Upload-Concat``), the PATCH preconditions, expiry,
and turning an upload's metadata into checked ingest options with the rules every entry point
runs (:mod:`reelflow.ingest_options`). A refusal is a :class:`TusError` carrying the HTTP
status the handler answers and any headers the protocol requires with it.

Must not: do I/O, read settings or the clock (``now`` and limits are arguments), or import
starlette, boto3, prefect or sqlmodel. The HTTP handlers (deployments/gateway) call these.

Modules, one job each: :mod:`.protocol` (constants, ``TusError``, version, method override,
lengths, offsets, expiry), :mod:`.metadata` (``Upload-Metadata`` and the upload's options),
:mod:`.concat` (``Upload-Concat``), :mod:`.patch` (checksums, PATCH preconditions, the HEAD and
PATCH answers). Everything is imported from here, ``from reelflow.tus import ...``.

API (the statuses a refusal answers with, on the right):

    TUS_VERSION, SUPPORTED_VERSIONS, EXTENSIONS, CHECKSUM_ALGORITHMS, OFFSET_CONTENT_TYPE,
    CHECKSUM_MISMATCH_STATUS (460), CORS_ALLOW_METHODS, CORS_ALLOW_HEADERS, CORS_EXPOSE_HEADERS
    TusError(status, message, *, headers=None, reason=...)        .status .headers .reason
    check_version(header, method) -> None                           412 + Tus-Version
    effective_method(method, override) -> str                       400 unknown override
    parse_metadata(header) -> dict[str, str | None]                 400 malformed / duplicate
    encode_metadata(meta) -> str                                    the inverse (clients, tests)
    parse_length(headers, *, max_size) -> int | None                400 / 413; None = deferred
    check_size(length, max_size) -> int                             413 (e.g. a final's total)
    parse_offset(header) -> int                                     400
    parse_checksum(header) -> Checksum | None                       400 unknown algo / bad digest
    Checksum(algorithm, digest): .hasher() .matches(digest) .verify(digest) (460) .header()
    parse_concat(header) -> Concat | None                           Concat(kind, ids); 400
    check_final_creation(headers)                                   400 length on a final
    creation_has_upload(content_type) -> bool                       creation-with-upload body?
    check_patch(*, state_offset, state_length, kind, content_type, offset_header,
                body_length=None) -> int                            415, 400, 403, 409, 400
    patch_length(header, *, state_length, state_offset, max_size) -> int | None
                                                                    deferred length on PATCH
    http_date(dt) -> str ; expired(expires_at, now) -> bool ; check_not_expired(...) (410)
    options_headers(max_size) -> dict[str, str]                     the OPTIONS response
    head_headers(*, offset, length, metadata_header, concat_header, expires_at)  HEAD response
    patch_headers(*, offset, expires_at)                            a 204 PATCH response
    upload_options(meta, *, allowed_accounts, settings, now) -> UploadOptions
        UploadOptions: the checked raw values and .ingest (IngestOptions, which has no
        filename/filetype); .publish/.mode/.publish_at as IngestOptions has them, .as_json()
        for the catalog. 400 bad option, 403 account not allowed,
        ConfigurationError (not a TusError) when the settings' defaults are inconsistent.

``check_patch`` returns the checked client offset (== ``state_offset``).
"""

from __future__ import annotations

from reelflow.tus.concat import MAX_CONCAT_UPLOADS, Concat, check_final_creation, parse_concat
from reelflow.tus.metadata import (
    MAX_FILENAME_CHARS,
    MAX_METADATA_HEADER_BYTES,
    OPTION_KEYS,
    UploadOptions,
    encode_metadata,
    parse_metadata,
    upload_options,
)
from reelflow.tus.patch import (
    Checksum,
    check_patch,
    check_within_length,
    creation_has_upload,
    head_headers,
    parse_checksum,
    patch_headers,
    patch_length,
)
from reelflow.tus.protocol import (
    CHECKSUM_ALGORITHMS,
    CHECKSUM_MISMATCH_STATUS,
    CORS_ALLOW_HEADERS,
    CORS_ALLOW_METHODS,
    CORS_EXPOSE_HEADERS,
    EXTENSIONS,
    METHODS,
    OFFSET_CONTENT_TYPE,
    SUPPORTED_VERSIONS,
    TUS_VERSION,
    UPLOAD_ID,
    HeaderMap,
    TusError,
    check_not_expired,
    check_size,
    check_version,
    effective_method,
    expired,
    http_date,
    options_headers,
    parse_length,
    parse_offset,
)

__all__ = [
    "CHECKSUM_ALGORITHMS",
    "CHECKSUM_MISMATCH_STATUS",
    "CORS_ALLOW_HEADERS",
    "CORS_ALLOW_METHODS",
    "CORS_EXPOSE_HEADERS",
    "EXTENSIONS",
    "MAX_CONCAT_UPLOADS",
    "MAX_FILENAME_CHARS",
    "MAX_METADATA_HEADER_BYTES",
    "METHODS",
    "OFFSET_CONTENT_TYPE",
    "OPTION_KEYS",
    "SUPPORTED_VERSIONS",
    "TUS_VERSION",
    "UPLOAD_ID",
    "Checksum",
    "Concat",
    "HeaderMap",
    "TusError",
    "UploadOptions",
    "check_final_creation",
    "check_not_expired",
    "check_patch",
    "check_size",
    "check_version",
    "check_within_length",
    "creation_has_upload",
    "effective_method",
    "encode_metadata",
    "expired",
    "head_headers",
    "http_date",
    "options_headers",
    "parse_checksum",
    "parse_concat",
    "parse_length",
    "parse_metadata",
    "parse_offset",
    "patch_headers",
    "patch_length",
    "upload_options",
]
