"""What the images' Python entrypoints share: the PostgreSQL image's pgnode and the Pgpool-II
image's pgpool-entry render the deploy/ templates and read their settings and secrets here.
deploy/docker/init/voting-init does the same in POSIX sh for the official images, which have no
Python; the two follow the same rules:

- a template's placeholders are `${NAME}` (upper case) and nothing else: `$NAME`, `${name}` and
  every other `$` stay as they are, and a placeholder without a value is an error, never an
  empty string;
- a secret NAME is read from the file NAME_FILE names (a Docker secret), without its trailing
  newline, and that file wins over a NAME set as well.

Each image copies this file onto its python3's own module path (see the Dockerfiles, built from
deploy/docker), so it is imported the same way there as here. Only modules of python3-minimal
are imported. Unit tests: test_voting_common.py.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

_PLACEHOLDER = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")


def render_text(text: str, values: Mapping[str, object], source: str = "<text>") -> str:
    """`text` with every `${NAME}` replaced by `values[NAME]`; a KeyError naming `source` and
    every missing NAME when a placeholder has no value."""
    missing = sorted({name for name in _PLACEHOLDER.findall(text) if name not in values})
    if missing:
        raise KeyError(f"{source}: no value for {', '.join(missing)}")
    return _PLACEHOLDER.sub(lambda match: str(values[match.group(1)]), text)


def render_file(path: str, values: Mapping[str, object]) -> str:
    """The template at `path`, rendered (errors name the file)."""
    with open(path, encoding="utf-8") as file:
        return render_text(file.read(), values, os.path.basename(path))


def secret(env: Mapping[str, str], name: str) -> str:
    """NAME, or the content of the file NAME_FILE names (which wins), without the trailing
    newline; a ValueError when neither gives a value."""
    path = env.get(f"{name}_FILE")
    if path:
        with open(path, encoding="utf-8") as file:
            value = file.read().rstrip("\r\n")
    else:
        value = env.get(name, "")
    if not value:
        raise ValueError(f"{name} (or {name}_FILE) is required")
    return value


def required(env: Mapping[str, str], name: str) -> str:
    """The setting NAME without surrounding blanks; a ValueError when it is unset or blank."""
    value = env.get(name, "").strip()
    if not value:
        raise ValueError(f"{name} is required")
    return value
