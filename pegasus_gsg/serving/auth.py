"""The bearer-token convention shared by the server (server/auth.py checks it) and the client.

Every authenticated RPC carries the metadata `authorization: Bearer <token>`; the token is
read from a file so that it never appears on a command line.
"""

from __future__ import annotations

from pathlib import Path

AUTH_METADATA_KEY = "authorization"
"""gRPC metadata key of the bearer token (lower case, as gRPC requires)."""


def bearer(token: str) -> str:
    """The metadata value for `token`: `Bearer <token>`."""
    return f"Bearer {token}"


def read_token(path: str | Path) -> str:
    """The token in a file (surrounding whitespace removed).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is empty.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"auth token file {path} does not exist")
    token = path.read_text(encoding="utf-8").strip()
    if not token:
        raise ValueError(f"auth token file {path} is empty")
    return token
