"""Test support shared by the integration and e2e suites.

Owns: real stand-ins for external systems (``s3server``: moto's S3 over HTTP with counts and
faults) and the session clip cache (``clips``: valid and deliberately bad videos made by ffmpeg).
Must not: hold assertions or fixtures; conftest files wire these into pytest.
"""
