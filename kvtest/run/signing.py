"""The run's shared secret (token) and the signature every role puts on what it writes to the store.

A torch.distributed store has no authentication: whoever reaches its port reads and writes any key.
With a token, each value a role writes is sealed: ``{"kvtest_signed": 1, "token": ID, "mac": MAC,
"json": TEXT}`` where MAC is HMAC-SHA256 over the run id, the full key and the value's JSON text.
A reader opens the seal with its own token; a value that is unsigned, signed with another token or
signed for another key or run is refused. ``ID`` names the token (a hash of it, never the secret),
so a role started with a different token can be told apart from a stranger with none. The seal
is a signature, not encryption: values stay readable by anyone who reaches the store.

:class:`RunSeal` is the one path through which a value is signed, read and refused, the run
announcement p0 writes outside any run prefix included; :class:`ForgedValue` holds the one message.
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

from kvtest.run.errors import RendezvousError, RunRefused

__all__ = [
    "ANNOUNCEMENT_KEY",
    "BadToken",
    "SEAL",
    "TOKEN_ENV",
    "ForgedValue",
    "RunSeal",
    "Seal",
    "Token",
    "TokenMismatch",
    "open_seal",
    "seal",
    "token_from",
]

#: the environment variable that carries the token itself (local mode passes it to its children)
TOKEN_ENV = "KVTEST_TOKEN"
#: the member that marks a sealed value
SEAL = "kvtest_signed"
MIN_TOKEN_CHARS = 16
#: the suspicion every refused value states
STRANGER = "someone else is writing to this rendezvous"
#: where p0 announces its run id, outside any run prefix
ANNOUNCEMENT_KEY = "kvtest/current-run"
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


class BadToken(RunRefused):
    """The token given cannot be used (unreadable, too short); the session raises it as a usage error."""


class TokenMismatch(RendezvousError):
    """Roles of one run were started with different tokens (or one without)."""


class ForgedValue(RendezvousError):
    """A value under a run key that is not signed with this run's token."""

    def __init__(self, full: str, verdict: Seal, their_id: str | None, token: Token | None) -> None:
        if verdict is Seal.OTHER_TOKEN:
            mine = token.id if token is not None else "none"
            why = (
                f"is signed with another token (id {their_id}; this run's is {mine}): a role started "
                f"with a different --kv-token-file, or {STRANGER}"
            )
        else:
            why = f"is not signed with this run's token: {STRANGER}"
        super().__init__(f"a value under {full!r} {why}")
        self.key = full
        self.verdict = verdict
        self.their_id = their_id


@dataclass(frozen=True)
class Announcement:
    """What a reader makes of p0's run announcement: the run id it claims (None when unreadable),
    how it is signed and the signer's token id."""

    run_id: str | None
    verdict: Seal
    their_id: str | None


class RunSeal:
    """The one token check: every value a role writes is signed here, every value it reads is
    opened here, and a value that fails is refused here, with :class:`ForgedValue`'s message.

    :param token: the run's token; None signs nothing and refuses what is signed.
    :param me: the role reading, for messages.
    """

    def __init__(self, token: Token | None, me: str) -> None:
        self.token = token
        self.me = me

    def encode(self, run_id: str, full: str, value: Any) -> str:
        """The stored text of ``value`` under the full key ``full``: sealed when there is a token."""
        return seal(self.token, run_id, full, value) if self.token else json.dumps(value)

    def decode(self, run_id: str, full: str, raw: bytes) -> Any:
        """The value stored under ``full``. JSON only: anything else is refused, never unpickled or
        run. With a token, a value not signed with it is a :class:`ForgedValue`; without one, a
        signed value is a :class:`TokenMismatch`."""
        try:
            value = json.loads(raw)
        except (UnicodeDecodeError, ValueError):
            if self.token is not None:
                raise ForgedValue(full, Seal.UNSIGNED, None, self.token) from None
            shown = bytes(raw[:32])
            raise RendezvousError(
                f"{self.me} read a value that is not JSON under {full!r} ({len(raw)} bytes, "
                f"starting {shown!r}): refusing it; is a stranger writing to this rendezvous?"
            ) from None
        if self.token is not None:
            verdict, value, their_id = open_seal(self.token, run_id, full, value)
            if verdict is not Seal.VALID:
                raise ForgedValue(full, verdict, their_id, self.token)
        elif is_sealed(value):
            raise TokenMismatch(
                f"{self.me} read a value under {full!r} signed with a token (id {value.get('token')}) "
                f"but {self.me} was started without one: give every role the same --kv-token-file "
                f"(or {TOKEN_ENV})"
            )
        return value

    def announce(self, run_id: str) -> str:
        """p0's announcement of ``run_id`` as stored under :data:`ANNOUNCEMENT_KEY`: the run id
        itself, or sealed for that run when there is a token."""
        return seal(self.token, run_id, ANNOUNCEMENT_KEY, run_id) if self.token else run_id

    def read_announcement(self, stored: bytes) -> Announcement:
        """The run p0 announced, and whether this role's token signed it."""
        try:
            data = json.loads(stored)
        except (UnicodeDecodeError, ValueError):
            data = None
        if not is_sealed(data):
            try:
                text = stored.decode()
            except UnicodeDecodeError:
                return Announcement(None, Seal.BAD, None)
            return Announcement(text, Seal.UNSIGNED if self.token else Seal.VALID, None)
        inner = data.get("json") if isinstance(data.get("json"), str) else "null"
        try:
            claimed = json.loads(inner)
        except ValueError:
            claimed = None
        current = claimed if isinstance(claimed, str) else None
        if self.token is None:
            their = data.get("token")
            return Announcement(current, Seal.OTHER_TOKEN, their if isinstance(their, str) else None)
        verdict, _, their_id = open_seal(self.token, current or "", ANNOUNCEMENT_KEY, data)
        return Announcement(None if verdict is Seal.BAD else current, verdict, their_id)

    def forged(self, full: str, verdict: Seal, their_id: str | None = None) -> ForgedValue:
        return ForgedValue(full, verdict, their_id, self.token)

    def mismatch(self, run_id: str, where: str, their_id: str | None) -> TokenMismatch:
        """The refusal of a run announced with another token (or none) than this role's."""
        mine = f"this role's is {self.token.id}" if self.token else "this role has none"
        theirs = f"signed with token {their_id}" if their_id else "not signed"
        return TokenMismatch(
            f"the run {run_id} at {where} is {theirs} ({mine}): p0 was started with "
            f"another token; give every role the same --kv-token-file (or {TOKEN_ENV})"
        )


def _checked(text: str, where: str) -> Token:
    secret = text.strip()
    if len(secret) < MIN_TOKEN_CHARS:
        raise BadToken(
            f"kvtest: the token from {where} is too short ({len(secret)} characters, at least "
            f"{MIN_TOKEN_CHARS}): make one with {MAKE_ONE} and give every role the same file"
        )
    return Token(secret.encode())


def _read(path: Path, where: str) -> Token:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problem = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise BadToken(
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
