"""The upload gateway (issue 10): tus 1.0 over HTTP into the staged multipart uploads.

Modules: :mod:`.app` (the Starlette app: routes, CORS, the tus handlers), :mod:`.auth` (the
bearer token of every request), :mod:`.handoff` (what happens once the last byte is stored),
:mod:`.serve` (uvicorn), :mod:`.cli` (``reelflow gateway``).

Importing this package imports nothing: ``reelflow`` mounts the CLI at start.
"""
