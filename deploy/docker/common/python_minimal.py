"""For the images' unit tests, not copied into any image: the modules a file imports, and those
of python3-minimal (Debian bookworm's, all the entrypoints' images install) they may be.

Every module listed was checked to be in libpython3.11-minimal (`dpkg -S`); add one only after
checking it too, or the entrypoint fails to start in its image.
"""

from __future__ import annotations

import ast
from pathlib import Path

PYTHON3_MINIMAL = frozenset(
    {
        "__future__",
        "collections",
        "contextlib",
        "fcntl",  # built into Debian's interpreter (sys.builtin_module_names)
        "hashlib",
        "os",
        "pwd",
        "re",
        "signal",
        "socket",
        "subprocess",
        "sys",
        "time",
        "typing",
    }
)


def top_level_imports(path: Path) -> set[str]:
    """The top-level name of every module `path` imports (`collections` for `collections.abc`)."""
    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    return imported
