"""The tus creation handler (``POST /uploads/``): a single, partial or final upload.

A single or partial upload is staged by the writer (``TusWriter.create``) and, with
creation-with-upload, gets its first bytes as a PATCH would (:meth:`GatewayBase._write_body`).
A final concatenation is assembled at once from its received partials, under the hold of each
(:mod:`deployments.gateway.concat`), and checked as a video then.

Must not: log a token or the Authorization header.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Sequence
from datetime import timedelta

import anyio
import anyio.to_thread
from starlette.requests import Request
from starlette.responses import Response

from deployments.gateway import concat
from deployments.gateway.auth import not_found
from deployments.gateway.base import GatewayBase, MagicCheck, gateway_log, not_a_video
from deployments.gateway.body import declared_length, has_body
from reelflow import tus
from reelflow.errors import InputRejectedError
from reelflow.rules import sniff_container
from storage import gateway_uploads as uploads
from storage import stages
from storage.gateway_uploads import GatewayUpload

UPLOAD_ID_BYTES = 18  # secrets.token_urlsafe(18): 24 characters, 144 random bits


class Creation(GatewayBase):
    """``POST /uploads/``: the creation extension and its variants."""

    async def create(self, request: Request) -> Response:
        h = request.headers
        claims = self._claims(request)
        max_size = self._max_size(claims)
        spec = tus.parse_concat(h.get("upload-concat"))
        kind = spec.kind if spec is not None else "single"
        meta = tus.parse_metadata(h.get("upload-metadata"))
        if kind == "final":
            tus.check_final_creation(h)
            length = None
        else:
            length = tus.parse_length(h, max_size=max_size)
        # A partial's metadata does not carry over (the final's does): only the final's and a
        # single upload's options are publish options.
        options = (
            None
            if kind == "partial"
            else tus.upload_options(
                meta, allowed_accounts=claims.accounts, settings=self.settings, now=self.now()
            )
        )
        body = has_body(request)
        checksum = None
        if body:
            if kind == "final":
                raise tus.TusError(
                    400,
                    "a final upload takes no body: its bytes are its partials'",
                    reason="body_on_final",
                )
            if not tus.creation_has_upload(h.get("content-type")):
                raise tus.TusError(
                    415,
                    f"a creation with a body needs Content-Type: {tus.OFFSET_CONTENT_TYPE}",
                    reason="bad_content_type",
                )
            checksum = tus.parse_checksum(h.get("upload-checksum"))
            size = declared_length(request)
            if length is not None and size is not None:
                tus.check_within_length(size, length)
        if kind == "single" and length == 0:
            self._refuse_empty()
        now = self.now()
        row = GatewayUpload(
            id=secrets.token_urlsafe(UPLOAD_ID_BYTES),
            owner=claims.subject,
            account=options.account if options else None,
            metadata_header=h.get("upload-metadata") or None,
            metadata_json=json.dumps(options.as_json() if options else {}),
            length=length,
            kind=kind,
            concat_json=json.dumps(list(spec.ids)) if spec and kind == "final" else None,
            part_size=self.settings.gateway_part_size_bytes,
            store_url=self.store.url,
            staging_key=uploads.staging_key_for("-"),  # the writer sets the real one
            expires_at=now + timedelta(seconds=self.settings.gateway_upload_ttl_s),
            created_at=now,
        )
        if kind == "final":
            assert spec is not None
            row = await anyio.to_thread.run_sync(
                self._create_final, row, spec.ids, claims.subject, max_size, limiter=self.limiter
            )
        else:
            row = await anyio.to_thread.run_sync(self._create, row)
            if body:
                written = await self._write_body(
                    request,
                    row.id,
                    claims,
                    content_type=h.get("content-type"),
                    offset_header="0",
                    checksum=checksum,
                    creating=True,
                )
                row = written.row
        gateway_log().info(
            "upload_created",
            upload=row.id,
            owner=row.owner,
            kind=row.kind,
            length=row.length,
            offset=row.offset,
        )
        headers = {
            "Location": str(request.url_for("upload", upload_id=row.id)),
            "Upload-Offset": str(row.offset),
            **self._expiry_headers(row),
        }
        return Response(status_code=201, headers=headers)

    def _refuse_empty(self) -> None:
        """A single upload of 0 bytes is no video: refused before anything is staged."""
        try:
            sniff_container(b"")
        except InputRejectedError as exc:
            raise not_a_video(exc) from exc

    def _create(self, row: GatewayUpload) -> GatewayUpload:
        row = self.writer.create(row)
        self._stage(row, stages.RECEIVING, at=row.created_at)
        if row.length == 0:  # only a partial gets here: complete at once (one empty part)
            row = self.writer.finish_zero_length(row)
        return row

    def _create_final(
        self, row: GatewayUpload, ids: Sequence[str], subject: str, max_size: int
    ) -> GatewayUpload:
        """The final upload of a concatenation, assembled now from its received partials."""
        found = [uploads.get(self.engine, pid) for pid in ids]
        for pid, prow in zip(ids, found, strict=True):
            if prow is None or prow.owner != subject or prow.state == uploads.CANCELLED:
                raise not_found(pid)
        partials = [p for p in found if p is not None]
        concat.check_partials(partials)
        total = tus.check_size(sum(p.length or 0 for p in partials), max_size)
        if total == 0:
            self._refuse_empty()
        with self._writing(), contextlib.ExitStack() as stack:
            fences = [stack.enter_context(self._hold(p.id)) for p in partials]
            # Read again under the holds: a DELETE or another final may have come first.
            partials = [
                self._usable(uploads.get(self.engine, p.id), subject, p.id) for p in partials
            ]
            concat.check_partials(partials)
            row.length = total
            row = self.writer.create(row)
            self._stage(row, stages.RECEIVING, at=row.created_at)
            check = MagicCheck()
            try:
                result = concat.assemble_final(self.writer, row, partials, first_bytes_check=check)
            except InputRejectedError as exc:
                self.writer.terminate(row)
                if check.refusal is exc:  # not a video: nothing of it is kept
                    self._stage(row, stages.FAILED, reason=exc.reason, message=str(exc)[:300])
                    for p, fence in zip(partials, fences, strict=True):
                        self.writer.terminate(p, fence=fence)
                    raise not_a_video(exc) from exc
                raise
            except BaseException:
                # The partials stay received (their completed objects are reused by a retry).
                with contextlib.suppress(Exception):
                    self.writer.terminate(row)
                raise
            for p, fence in zip(partials, fences, strict=True):
                # The final holds the bytes now: the partial's staging is removed and its row
                # is done with (`stored`: nothing to hand off, nothing to clean up).
                self.writer.purge(p, fence=fence)
                uploads.cas_update(self.engine, p.id, p.version, fence=fence, state=uploads.STORED)
        if result.completed:
            self._hand_off(result.row)
        return result.row
