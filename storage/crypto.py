"""Encryption at rest of TikTok secrets (tokens, upload URLs): one Fernet key per installation.

The key: ``settings.secret_key``, or else ``$REELFLOW_HOME/secret.key``, created 0600 on first
use (linked into place atomically, so concurrent first runs agree on one key).

Must not: hand out a decrypted secret except through :class:`SecretBox` (whose ``repr`` shows
nothing), or touch the catalog.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import tempfile
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from reelflow.errors import ConfigurationError
from reelflow.settings import Settings

KEY_FILE_NAME = "secret.key"
KEY_FILE_MODE = 0o600


class SecretBox:
    """Fernet encryption of tokens and upload URLs; shows nothing in ``repr``."""

    def __init__(self, key: bytes) -> None:
        self._fernet = Fernet(key)

    def __repr__(self) -> str:
        return "SecretBox(<key hidden>)"

    def seal(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def open(self, ciphertext: str) -> str:
        try:
            return self._fernet.decrypt(ciphertext.encode()).decode()
        except InvalidToken:
            raise ConfigurationError(
                "a stored TikTok secret cannot be decrypted: REELFLOW_SECRET_KEY or "
                "HOME/secret.key changed since it was written; re-add the account"
            ) from None


def secret_box(settings: Settings) -> SecretBox:
    """The box for this installation: ``settings.secret_key``, else the home's key file."""
    if settings.secret_key is not None:
        return SecretBox(_fernet_key(settings.secret_key.get_secret_value()))
    return SecretBox(_key_file(settings.home / KEY_FILE_NAME))


def _fernet_key(value: str) -> bytes:
    raw = value.strip().encode()
    try:
        if len(base64.urlsafe_b64decode(raw)) == 32:
            return raw  # already a Fernet key (Fernet.generate_key())
    except (binascii.Error, ValueError):
        pass
    if len(raw) < 16:
        raise ConfigurationError("REELFLOW_SECRET_KEY is too short (use Fernet.generate_key())")
    # Any other string of decent length: a SHA-256 of it is a valid 32-byte key.
    return base64.urlsafe_b64encode(hashlib.sha256(raw).digest())


def _key_file(path: Path) -> bytes:
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(Fernet.generate_key())
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, KEY_FILE_MODE)
        # link() never replaces: of two first runs racing, one key wins and both read it.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        os.unlink(tmp)
    return path.read_bytes().strip()
