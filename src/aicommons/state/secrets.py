"""Secrets: generated once, encrypted at rest (Fernet), rotated on request, never printed.

The key comes from, in order: the environment variable (AICOMMONS_SECRET_KEY: a Fernet key),
a passphrase (AICOMMONS_SECRET_PASSPHRASE, stretched with scrypt and a salt kept in the state),
or a 0600 key file created on first use (`.aicommons/secret.key`). A check token in the state
makes a wrong key fail loudly instead of silently generating new secrets.
"""

from __future__ import annotations

import base64
import os
import secrets as pysecrets
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from aicommons.errors import AicError

ENV_KEY = "AICOMMONS_SECRET_KEY"
ENV_PASSPHRASE = "AICOMMONS_SECRET_PASSPHRASE"
KEY_FILE = "secret.key"
_CHECK = b"aicommons-key-check"


class SecretKeyError(AicError):
    """The secrets key is missing, unreadable or not the one the state was written with."""


@dataclass
class KeySource:
    env: str | None = ENV_KEY
    passphrase_env: str | None = ENV_PASSPHRASE
    key_file: Path | None = None
    passphrase: str | None = None

    @classmethod
    def default(cls, state_dir: Path, key_file: str | None = None, key_env: str | None = None) -> KeySource:
        kf = Path(key_file) if key_file else state_dir / KEY_FILE
        if not kf.is_absolute():
            kf = state_dir.parent / kf if key_file else kf
        return cls(env=key_env or ENV_KEY, key_file=kf)

    def export(self, store) -> dict[str, str]:
        """The environment entries that give another process this same key (a service of the
        site that runs aicommons, e.g. the portal): for its 0600 env file, never to print."""
        if self.env and os.environ.get(self.env):
            return {self.env: os.environ[self.env].strip()}
        phrase = self.passphrase or (os.environ.get(self.passphrase_env) if self.passphrase_env else None)
        if phrase:
            return {self.passphrase_env or ENV_PASSPHRASE: phrase}
        if self.key_file is None:
            raise SecretKeyError(f"no secrets key: set {self.env} or a passphrase")
        return {self.env or ENV_KEY: _key_from_file(self.key_file, create=False).decode()}

    def fernet(self, store) -> Fernet:
        if self.env and os.environ.get(self.env):
            return _fernet(os.environ[self.env].strip().encode(), f"${self.env}")
        phrase = self.passphrase or (os.environ.get(self.passphrase_env) if self.passphrase_env else None)
        if phrase:
            salt = store.set_meta("scrypt_salt", base64.b64encode(os.urandom(16)).decode(), only_if_missing=True)
            kdf = Scrypt(salt=base64.b64decode(salt), length=32, n=2**15, r=8, p=1)
            return Fernet(base64.urlsafe_b64encode(kdf.derive(phrase.encode())))
        if self.key_file is None:
            raise SecretKeyError(f"no secrets key: set {self.env} or a passphrase")
        return _fernet(_key_from_file(self.key_file, create=store.meta("key_check") is None), str(self.key_file))


def _fernet(raw: bytes, where: str) -> Fernet:
    try:
        return Fernet(raw)
    except ValueError:
        raise SecretKeyError(f"{where} is not a valid key (32 url-safe base64 bytes; make one with "
                             f"`python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'`)") from None


def _key_from_file(path: Path, *, create: bool) -> bytes:
    if not path.exists():
        if not create:
            raise SecretKeyError(f"secrets key file {path} is missing but the state holds secrets encrypted with it; "
                                 f"restore the key file (or set {ENV_KEY})")
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Write a temp file, then link it in: a kill -9 never leaves an empty key file behind,
        # and of two racing processes the second uses the first one's key.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(Fernet.generate_key())
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise SecretKeyError(f"secrets key file {path} is readable by others (mode {mode:o}); run chmod 600 {path}")
    return path.read_bytes().strip()


def generate(key: str) -> str:
    """A fresh value; 32 random bytes, URL-safe (fits env files, URLs and YAML unquoted)."""
    return pysecrets.token_urlsafe(32)


class SecretStore:
    """SecretLookup-compatible: `store(scope, key)` and `store.get(scope, key)` both work."""

    def __init__(self, state, key_source: KeySource, *, read_only: bool = False):
        self._state = state
        self._source = key_source
        self._f: Fernet | None = None
        self._cache: dict[tuple[str, str], tuple[int, str]] = {}
        # Read-only (plan, render, users show): a value not stored yet is made up for this process
        # only, so files render whole; nothing is written and no key file is made. The next apply
        # generates the real one.
        self._read_only = read_only
        self.throwaway: set[tuple[str, str]] = set()

    def _fernet(self) -> Fernet:
        if self._f is None:
            f = self._source.fernet(self._state)
            check = self._state.set_meta("key_check", f.encrypt(_CHECK).decode(), only_if_missing=True)
            try:
                if f.decrypt(check.encode()) != _CHECK:
                    raise InvalidToken
            except InvalidToken:
                raise SecretKeyError("the secrets key does not match the one this state was written with; "
                                     "use the original key file / AICOMMONS_SECRET_KEY / passphrase") from None
            self._f = f
        return self._f

    def __call__(self, scope: str, key: str) -> str:
        return self.get(scope, key)

    def get(self, scope: str, key: str) -> str:
        """The value, generated and stored on first use (never regenerated: ON CONFLICT DO NOTHING)."""
        if not self._cache:
            self._load_all()
        hit = self._cache.get((scope, key))
        if hit:
            return hit[1]
        row = self._state._read("SELECT token, version FROM secrets WHERE scope = ? AND key = ?", (scope, key))
        if not row and self._read_only:
            self.throwaway.add((scope, key))
            self._cache[(scope, key)] = (1, generate(key))  # version 1: what the apply will store
            return self._cache[(scope, key)][1]
        f = self._fernet()
        if not row:
            token = f.encrypt(generate(key).encode())
            with self._state.tx() as c:
                c.execute("INSERT INTO secrets VALUES (?, ?, ?, 1, ?, NULL) ON CONFLICT DO NOTHING", (scope, key, token, time.time()))
                row = c.execute("SELECT token, version FROM secrets WHERE scope = ? AND key = ?", (scope, key)).fetchall()
        value = self._decrypt(f, row[0][0], scope, key)
        self._cache[(scope, key)] = (row[0][1], value)
        return value

    def version(self, scope: str, key: str) -> int:
        """1 for a never-rotated secret; 0 if it does not exist yet."""
        row = self._state._read("SELECT version FROM secrets WHERE scope = ? AND key = ?", (scope, key))
        return row[0][0] if row else 0

    def versions(self) -> dict[tuple[str, str], int]:
        stored = {(s, k): v for s, k, v in self._state._read("SELECT scope, key, version FROM secrets")}
        return {**dict.fromkeys(self.throwaway, 1), **stored}

    def rotate(self, scope: str, key: str) -> int:
        """Store a new value; the next apply pushes it to the back end and every consumer. Returns the version."""
        if self._read_only:
            raise AicError("internal: rotate on a read-only secret store")
        f = self._fernet()
        token = f.encrypt(generate(key).encode())
        with self._state.tx() as c:
            cur = c.execute("UPDATE secrets SET token = ?, version = version + 1, rotated_at = ? WHERE scope = ? AND key = ?",
                            (token, time.time(), scope, key))
            if not cur.rowcount:
                raise AicError(f"no secret {key!r} in scope {scope!r}; see `aicommons state show`")
            self._state._bump(c)
            version = c.execute("SELECT version FROM secrets WHERE scope = ? AND key = ?", (scope, key)).fetchone()[0]
        self._cache.pop((scope, key), None)
        return version

    def put(self, scope: str, key: str, value: str) -> int:
        """Store a value made elsewhere (an identity provider's own invitation id), encrypted like
        every other; a new version if one was stored. Returns the version."""
        if self._read_only:
            raise AicError("internal: put on a read-only secret store")
        token = self._fernet().encrypt(value.encode())
        with self._state.tx() as c:
            c.execute("INSERT INTO secrets VALUES (?, ?, ?, 1, ?, NULL) ON CONFLICT (scope, key) DO UPDATE SET "
                      "token = excluded.token, version = secrets.version + 1, rotated_at = excluded.created_at",
                      (scope, key, token, time.time()))
            self._state._bump(c)
            version = c.execute("SELECT version FROM secrets WHERE scope = ? AND key = ?", (scope, key)).fetchone()[0]
        self._cache.pop((scope, key), None)
        return version

    def known(self) -> list[tuple[str, str, int]]:
        return self._state._read("SELECT scope, key, version FROM secrets ORDER BY scope, key")

    def _load_all(self) -> None:
        """Decrypt every stored secret once (a plan reads hundreds; one query beats one per key)."""
        rows = self._state._read("SELECT scope, key, token, version FROM secrets")
        if not rows:
            return  # nothing to decrypt: the key is not needed (and not made) yet
        f = self._fernet()
        for scope, key, token, version in rows:
            if self._cache.get((scope, key), (None,))[0] != version:
                self._cache[(scope, key)] = (version, self._decrypt(f, token, scope, key))

    def values(self) -> list[str]:
        """Every stored value (for redaction filters only)."""
        self._load_all()
        return [v for _, v in self._cache.values()]

    def _decrypt(self, f: Fernet, token: bytes, scope: str, key: str) -> str:
        try:
            return f.decrypt(token).decode()
        except InvalidToken:
            raise SecretKeyError(f"secret {scope}/{key} cannot be decrypted with this key; "
                                 f"use the key the state was written with") from None
