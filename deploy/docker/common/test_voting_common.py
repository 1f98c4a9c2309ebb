"""Unit tests of what the images' entrypoints share: rendering, secrets, required settings.

python3 -m unittest discover -s deploy/docker/common -p 'test_*.py'
"""

from __future__ import annotations

import os
import sys
import tempfile
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import voting_common
from python_minimal import PYTHON3_MINIMAL, top_level_imports
from voting_common import render_file, render_text, required, secret


class Rendering(unittest.TestCase):
    def test_placeholders_are_filled_with_their_values(self):
        self.assertEqual(render_text("a ${X} b ${Y_2} ${X}", {"X": 1, "Y_2": "z"}), "a 1 b z 1")

    def test_a_placeholder_without_a_value_is_an_error_naming_every_missing_one(self):
        with self.assertRaisesRegex(KeyError, "t.conf: no value for Y, Z"):
            render_text("${Z}${X}${Y}", {"X": 1}, "t.conf")

    def test_an_empty_value_is_a_value(self):
        self.assertEqual(render_text("[${X}]", {"X": ""}), "[]")

    def test_only_braced_upper_case_names_are_placeholders(self):
        # envsubst would replace `$B`; voting-init and this leave it, as the templates expect.
        self.assertEqual(render_text("$a $B ${c} ${1X} $${B}", {"B": "!"}), "$a $B ${c} ${1X} $!")

    def test_values_are_inserted_as_they_are(self):
        self.assertEqual(render_text("${X}", {"X": r"\1 ${Y} & $0"}), r"\1 ${Y} & $0")

    def test_a_file_is_rendered_and_errors_name_it(self):
        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory) / "pgpool.conf"
            path.write_text("port = ${PORT}\nhost = ${HOST}\n")
            self.assertEqual(render_file(str(path), {"PORT": 5432, "HOST": "pg-1"}), "port = 5432\nhost = pg-1\n")
            with self.assertRaisesRegex(KeyError, "pgpool.conf: no value for HOST"):
                render_file(str(path), {"PORT": 5432})


class Secrets(unittest.TestCase):
    def secret_file(self, content: str) -> str:
        with tempfile.NamedTemporaryFile("w", delete=False, suffix=".secret") as file:
            file.write(content)
        self.addCleanup(os.unlink, file.name)
        return file.name

    def test_a_secret_comes_from_the_environment(self):
        self.assertEqual(secret({"PASSWORD": "pw"}, "PASSWORD"), "pw")

    def test_a_secret_file_wins_and_loses_its_trailing_newline(self):
        path = self.secret_file("from-file\r\n")
        self.assertEqual(secret({"PASSWORD": "pw", "PASSWORD_FILE": path}, "PASSWORD"), "from-file")

    def test_only_the_trailing_newline_goes(self):
        path = self.secret_file(" two\nlines \n")
        self.assertEqual(secret({"PASSWORD_FILE": path}, "PASSWORD"), " two\nlines ")

    def test_a_missing_or_empty_secret_is_refused(self):
        for env in ({}, {"PASSWORD": ""}, {"PASSWORD_FILE": self.secret_file("\n")}):
            with self.subTest(env=env), self.assertRaisesRegex(ValueError, r"PASSWORD \(or PASSWORD_FILE\)"):
                secret(env, "PASSWORD")

    def test_an_unreadable_secret_file_is_an_error(self):
        with self.assertRaises(OSError):
            secret({"PASSWORD_FILE": "/nonexistent/secret"}, "PASSWORD")


class Settings(unittest.TestCase):
    def test_a_required_setting_loses_surrounding_blanks(self):
        self.assertEqual(required({"NODES": " pg-1,pg-2 \n"}, "NODES"), "pg-1,pg-2")

    def test_a_missing_or_blank_setting_is_refused(self):
        for env in ({}, {"NODES": "  "}):
            with self.subTest(env=env), self.assertRaisesRegex(ValueError, "NODES is required"):
                required(env, "NODES")


class TheImagesHaveOnlyPythonMinimal(unittest.TestCase):
    def test_imports(self):
        self.assertLessEqual(top_level_imports(Path(voting_common.__file__)), PYTHON3_MINIMAL)


if __name__ == "__main__":
    unittest.main()
