"""API keys for ``ptv2 serve --api-keys FILE``: who may call, which tasks they see, what they may change.

The file (YAML) lists keys; each has a name (in logs and metrics, never the key), a role (``admin``:
every route; ``client``: predictions and listings, not adding or removing tasks), the task-name
patterns it may use (``fnmatch``: ``acme/*``; ``*`` also crosses ``/``) and how many requests it may
have in flight at once::

    keys:
      - name: acme-app
        key: "a-long-random-secret-4f9c2e"   # or sha256: "<hex digest of the key>"
        role: client
        tasks: ["acme/*"]
        max_concurrent: 16                    # default 16; one more in flight answers 429

Keys are kept only as SHA-256 digests; a presented key (``Authorization: Bearer KEY``) is hashed and
compared with every digest in constant time (``hmac.compare_digest``, no early exit). No key or a wrong
one answers 401; a task outside the key's patterns answers 404, exactly as a task that does not exist,
so tenants cannot learn each other's task names.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections import Counter
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Literal

import yaml
from starlette.types import ASGIApp, Receive, Scope, Send

from ptuning_v2.config import ConfigError
from ptuning_v2.serving.observability import context, json_error

MIN_KEY_CHARS = 16
DEFAULT_MAX_CONCURRENT = 16
OPEN_PATHS = frozenset({"/health"})
"""Answered without a key (liveness probes); it names no task."""
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ApiKey:
    """One key of the file: who it is, what it may do; the key itself only as its SHA-256 digest."""

    name: str
    role: Literal["admin", "client"]
    tasks: tuple[str, ...]
    max_concurrent: int
    digest: bytes

    def may_use(self, task: str) -> bool:
        return any(fnmatchcase(task, pattern) for pattern in self.tasks)

    @property
    def admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True)
class KeyRing:
    keys: tuple[ApiKey, ...]

    def find(self, presented: str) -> ApiKey | None:
        """The key whose digest matches ``presented``; every digest is compared, in constant time."""
        digest = hashlib.sha256(presented.encode("utf-8", "surrogatepass")).digest()
        found = None
        for key in self.keys:
            if hmac.compare_digest(key.digest, digest):
                found = key
        return found


def read_keys(path: str | Path) -> KeyRing:
    """The keys of a ``--api-keys`` file; ``ConfigError`` naming the file and entry for anything wrong."""
    where = f"--api-keys {path}"
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read it ({exc.strerror or exc})") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: not valid YAML ({' '.join(str(exc).split())})") from None
    if (
        not isinstance(data, dict)
        or set(data) != {"keys"}
        or not isinstance(data["keys"], list)
        or not data["keys"]
    ):
        raise ConfigError(f"{where}: expected a mapping with one entry, keys: a list of keys")
    keys = tuple(_read_key(entry, f"{where}: keys[{i}]") for i, entry in enumerate(data["keys"]))
    for what, values in (("name", [k.name for k in keys]), ("key", [k.digest for k in keys])):
        repeated = [v for v, n in Counter(values).items() if n > 1]
        if repeated:
            shown = repeated[0] if what == "name" else "(not shown)"
            raise ConfigError(f"{where}: two keys have the same {what} {shown}")
    return KeyRing(keys)


def _read_key(entry: object, where: str) -> ApiKey:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a mapping (name, key or sha256, role, tasks, max_concurrent)")
    unknown = sorted(set(entry) - {"name", "key", "sha256", "role", "tasks", "max_concurrent"})
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: name: expected a non-empty string")
    where = f"{where} ({name})"
    if ("key" in entry) == ("sha256" in entry):
        raise ConfigError(f"{where}: give exactly one of key and sha256")
    if "key" in entry:
        key = entry["key"]
        if not isinstance(key, str) or len(key) < MIN_KEY_CHARS:
            raise ConfigError(f"{where}: key: expected a string of at least {MIN_KEY_CHARS} characters")
        if not all("!" <= c <= "~" for c in key):  # what a client can send in a header, as it is
            raise ConfigError(f"{where}: key: use printable ASCII characters only, no spaces")
        digest = hashlib.sha256(key.encode("utf-8")).digest()
    else:
        hex_digest = entry["sha256"]
        if not isinstance(hex_digest, str) or not _HEX_DIGEST.fullmatch(hex_digest.lower()):
            raise ConfigError(f"{where}: sha256: expected 64 hexadecimal digits")
        digest = bytes.fromhex(hex_digest)
    role = entry.get("role")
    if role not in ("admin", "client"):
        raise ConfigError(f"{where}: role: expected admin or client, got {role!r}")
    tasks = entry.get("tasks", ["*"] if role == "admin" else None)
    if not isinstance(tasks, list) or not tasks or not all(isinstance(t, str) and t for t in tasks):
        raise ConfigError(f"{where}: tasks: expected a list of task-name patterns such as ['acme/*']")
    limit = entry.get("max_concurrent", DEFAULT_MAX_CONCURRENT)
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ConfigError(f"{where}: max_concurrent: expected a positive whole number")
    return ApiKey(name, role, tuple(tasks), limit, digest)


class AuthMiddleware:
    """401 without a valid key, 429 past the key's ``max_concurrent``; the key goes into the request's
    context for the routes (task patterns, admin routes) and the log line (its name)."""

    def __init__(self, app: ASGIApp, keys: KeyRing | None) -> None:
        self.app = app
        self.keys = keys
        self.in_flight: Counter[str] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.keys is None or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, _, presented = header.partition(" ")
        key = self.keys.find(presented.strip()) if scheme.lower() == "bearer" and presented.strip() else None
        if key is None:
            message = (
                "a valid API key is required (Authorization: Bearer KEY)"
                if header
                else "an API key is required (Authorization: Bearer KEY)"
            )
            for answer in json_error(401, message, {"WWW-Authenticate": "Bearer"}):
                await send(answer)
            return
        context(scope).key = key.name
        scope["ptv2.key"] = key
        if self.in_flight[key.name] >= key.max_concurrent:
            message = f"key {key.name!r} already has {key.max_concurrent} requests in flight, its limit; retry later"
            for answer in json_error(429, message, {"Retry-After": "1"}):
                await send(answer)
            return
        self.in_flight[key.name] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight[key.name] -= 1


def caller_key(scope: Scope) -> ApiKey | None:
    """The caller's key; None when the server has no keys (every route and task open)."""
    return scope.get("ptv2.key")
