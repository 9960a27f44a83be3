"""Secrets named by reference — an environment variable or a file — and resolved once, on load.

A plan, a proxy's settings or an engine URL says *where* a secret is, so the file that
configures nxnw need not hold it: ``{env = "NAME"}`` or ``{file = "/path"}`` in TOML (an
inline string is still accepted, for a laptop). The TSIG key, the proxies' admin token and
the ZooKeeper digest password are ``Secret`` fields; the Cassandra engine's URL names its
password with ``password_env=NAME`` or ``password_file=/path`` and calls ``read_secret``.

What this module guarantees:

* a resolved secret is a pydantic ``SecretStr``: its ``repr``, ``str`` and JSON dump are
  ``**********``, so a model that holds one can be logged or printed; only the line that
  hands the secret to a library calls ``get_secret_value()``;
* a secret that cannot be resolved (variable unset or empty, file unreadable or empty) is a
  ``SecretUnavailable`` (a ``ValueError``) naming the variable or file and the reason, never
  the value, which pydantic turns into the field's error line.

Not guaranteed: the value is read once; rotating it means restarting the process. A file's
permissions are the operator's business (nothing refuses a world-readable key file).

It lives in ``datastore/`` because every package may import ``datastore`` and an engine
needs it too; like the rest of ``datastore/`` it must never import anything else of ours.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, SecretStr

#: the keys a reference table may have; exactly one of them
SOURCES = ("env", "file")


class SecretUnavailable(ValueError):
    """A named secret could not be read; the message names where and why, never the value."""


def read_secret(*, env: str | None = None, file: str | None = None) -> str:
    """The secret in environment variable ``env`` or in ``file`` (exactly one of them).

    A file's content is stripped of surrounding whitespace: ``echo secret > file`` leaves a
    newline that is not part of the secret.
    """
    if (env is None) == (file is None):
        raise SecretUnavailable("name exactly one of env or file")
    if env is not None:
        value = os.environ.get(env)
        if value is None:
            raise SecretUnavailable(f"environment variable {env} is not set")
        if not value:
            raise SecretUnavailable(f"environment variable {env} is empty")
        return value
    assert file is not None
    try:
        value = Path(file).read_text().strip()
    except OSError as exc:
        raise SecretUnavailable(f"cannot read secret file {file}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise SecretUnavailable(f"secret file {file} is not UTF-8 text") from None
    if not value:
        raise SecretUnavailable(f"secret file {file} is empty")
    return value


def _resolve(value: Any) -> Any:
    if isinstance(value, (str, SecretStr)):
        return value  # inline, or already resolved (a model built from another one)
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(SOURCES))
        if unknown or len(value) != 1 or not isinstance(next(iter(value.values())), str):
            raise SecretUnavailable(f"a secret is a string, {{env = \"NAME\"}} or {{file = \"/path\"}}; got keys {sorted(value)}")
        return read_secret(**value)
    raise SecretUnavailable(f"a secret is a string, {{env = \"NAME\"}} or {{file = \"/path\"}}, not {type(value).__name__}")


#: a pydantic field type: inline string, ``{env = "NAME"}`` or ``{file = "/path"}`` → SecretStr
Secret = Annotated[SecretStr, BeforeValidator(_resolve)]
