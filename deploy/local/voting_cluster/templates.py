"""Renders the `deploy/` configuration files: `${NAME}` placeholders, nothing else.

The containers of the Swarm stack render the same files with `envsubst` at start, so the
syntax stays the one both understand. A placeholder without a value is an error, never an
empty string.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

_PLACEHOLDER = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")


def render_text(text: str, values: Mapping[str, object], source: str = "<text>") -> str:
    missing = sorted({m for m in _PLACEHOLDER.findall(text) if m not in values})
    if missing:
        raise KeyError(f"{source}: no value for {', '.join(missing)}")
    return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), text)


def render(template: Path, target: Path, values: Mapping[str, object], mode: int = 0o644) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render_text(template.read_text(), values, str(template)))
    target.chmod(mode)
    return target
