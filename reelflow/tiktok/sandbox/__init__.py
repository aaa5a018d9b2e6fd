"""A local emulator of TikTok's Content Posting API, served over real HTTP for tests and demos.

The package owns what TikTok *decides* and how it answers, one module per job:

- ``config``   what is fixed at start (:class:`SandboxConfig`)
- ``errors``   the two error shapes (:class:`SandboxError`, :class:`OAuthError`) and log ids
- ``clock``    "now", with an offset tests can advance
- ``faults``   the seeded fault dice
- ``accounts`` creators, privacy options, policy gates and posting caps
- ``oauth``    auth codes, grants, access/refresh tokens, Bearer checks
- ``rates``    per-token sliding-window rate limits
- ``ledger``   the publish rows
- ``uploads``  init validation (the chunk maths) and the chunk-PUT ledger
- ``media``    the checks run on a finished upload, and ffprobe
- ``status``   the publish status machine
- ``state``    :class:`SandboxState`, which composes the parts behind one lock
- ``app``      the HTTP face (Starlette + uvicorn): ``start_sandbox``, ``run_sandbox``

Its rules are written here on purpose and must never be imported from the client side
(``reelflow.tiktok.plan``, ``client``, ``errors``, ``tokens``), nor the other way round: an
emulator that shares the client's rules shares its bugs. ``[U]`` in a comment marks a choice made
where TikTok's documentation is silent or unclear. The only I/O outside ``app`` is the upload
file (created, removed) and ffprobe on a finished upload.
"""

from reelflow.tiktok.sandbox.accounts import SCOPE_PUBLISH, SCOPE_UPLOAD, Account
from reelflow.tiktok.sandbox.app import RunningSandbox, build_app, run_sandbox, start_sandbox
from reelflow.tiktok.sandbox.config import SandboxConfig
from reelflow.tiktok.sandbox.errors import OAuthError, SandboxError, new_log_id
from reelflow.tiktok.sandbox.faults import Faults, InjectedFault
from reelflow.tiktok.sandbox.ledger import Publish
from reelflow.tiktok.sandbox.media import check_media, ffprobe_file
from reelflow.tiktok.sandbox.oauth import AccessToken, Grant
from reelflow.tiktok.sandbox.state import SandboxState
from reelflow.tiktok.sandbox.uploads import PutPlan, validate_chunk_plan

__all__ = [
    "SCOPE_PUBLISH",
    "SCOPE_UPLOAD",
    "AccessToken",
    "Account",
    "Faults",
    "Grant",
    "InjectedFault",
    "OAuthError",
    "Publish",
    "PutPlan",
    "RunningSandbox",
    "SandboxConfig",
    "SandboxError",
    "SandboxState",
    "build_app",
    "check_media",
    "ffprobe_file",
    "new_log_id",
    "run_sandbox",
    "start_sandbox",
    "validate_chunk_plan",
]
