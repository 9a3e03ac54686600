"""The run's shared secret (token) and the signature every role puts on what it writes to the store.

A torch.distributed store has no authentication: whoever reaches its port reads and writes any key.
With a token, each value a role writes is sealed: ``{"kvtest_signed": 1, "token": ID, "mac": MAC,
"json": TEXT}`` where MAC is HMAC-SHA256 over the run id, the full key and the value's JSON text.
A reader opens the seal with its own token; a value that is unsigned, signed with another token or
signed for another key or run is refused. ``ID`` names the token (a hash of it, never the secret),
so a role started with a different token can be told apart from a stranger with none. The seal
is a signature, not encryption: values stay readable by anyone who reaches the store.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import pytest

__all__ = ["SEAL", "TOKEN_ENV", "Seal", "Token", "open_seal", "seal", "token_from"]

#: the environment variable that carries the token itself (local mode passes it to its children)
TOKEN_ENV = "KVTEST_TOKEN"
#: the member that marks a sealed value
SEAL = "kvtest_signed"
MIN_TOKEN_CHARS = 16
MAKE_ONE = "python -c 'import secrets; print(secrets.token_hex(32))' > kvtest.token"


@dataclass(frozen=True)
class Token:
    """A shared secret; :attr:`id` names it in messages without giving it away."""

    secret: bytes

    @classmethod
    def new(cls) -> Token:
        return cls(secrets.token_hex(32).encode())

    @property
    def id(self) -> str:
        return hashlib.sha256(b"kvtest token id\0" + self.secret).hexdigest()[:8]

    def text(self) -> str:
        return self.secret.decode()

    def mac(self, run_id: str, key: str, text: str) -> str:
        message = b"\0".join((run_id.encode(), key.encode(), text.encode()))
        return hmac.new(self.secret, message, hashlib.sha256).hexdigest()

    def __repr__(self) -> str:  # never print the secret
        return f"Token(id={self.id})"


class Seal(Enum):
    """What a reader makes of a stored value."""

    VALID = "valid"
    UNSIGNED = "unsigned"
    OTHER_TOKEN = "signed with another token"
    BAD = "signed wrongly"


def seal(token: Token, run_id: str, key: str, value: Any) -> str:
    """The stored text of ``value`` under ``key`` in run ``run_id``, signed with ``token``."""
    text = json.dumps(value)
    return json.dumps({SEAL: 1, "token": token.id, "mac": token.mac(run_id, key, text), "json": text})


def is_sealed(data: Any) -> bool:
    return isinstance(data, dict) and SEAL in data


def open_seal(token: Token, run_id: str, key: str, data: Any) -> tuple[Seal, Any, str | None]:
    """``(verdict, value, token id of the writer)`` for decoded JSON ``data`` read under ``key``.

    ``value`` is the signed value when the verdict is VALID; else ``data`` as it was (never trusted).
    """
    if not is_sealed(data):
        return Seal.UNSIGNED, data, None
    their_id = data.get("token") if isinstance(data.get("token"), str) else None
    if their_id != token.id:
        return Seal.OTHER_TOKEN, data, their_id
    text, mac = data.get("json"), data.get("mac")
    if not isinstance(text, str) or not isinstance(mac, str):
        return Seal.BAD, data, their_id
    if not hmac.compare_digest(mac, token.mac(run_id, key, text)):
        return Seal.BAD, data, their_id
    try:
        return Seal.VALID, json.loads(text), their_id
    except ValueError:
        return Seal.BAD, data, their_id


def _checked(text: str, where: str) -> Token:
    secret = text.strip()
    if len(secret) < MIN_TOKEN_CHARS:
        raise pytest.UsageError(
            f"kvtest: the token from {where} is too short ({len(secret)} characters, at least "
            f"{MIN_TOKEN_CHARS}): make one with {MAKE_ONE} and give every role the same file"
        )
    return Token(secret.encode())


def _read(path: Path, where: str) -> Token:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problem = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise pytest.UsageError(
            f"kvtest: cannot read the token file {str(path)!r} from {where}: {problem}; give a readable "
            f"file that holds the run's secret (make one with {MAKE_ONE})"
        ) from None
    return _checked(text, f"{path} ({where})")


def token_from(token_file: Path | None, where: str, env: Mapping[str, str] = os.environ) -> Token | None:
    """The run's token: ``--kv-token-file`` on the command line, else ``KVTEST_TOKEN``, else the
    token file from the environment or ini file; None when there is none."""
    if token_file is not None and where.startswith("the command line"):
        return _read(token_file, where)
    if env.get(TOKEN_ENV, "").strip():
        return _checked(env[TOKEN_ENV], f"the environment ({TOKEN_ENV})")
    if token_file is not None:
        return _read(token_file, where)
    return None
