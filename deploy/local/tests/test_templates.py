"""The `deploy/` templates render the same with our renderer and with `envsubst`."""

from __future__ import annotations

import re
import unittest
from pathlib import Path

from voting_cluster import templates, topology

TEMPLATE_DIRS = ["redis", "haproxy", "postgres", "pgpool", "traefik"]


def template_files() -> list[Path]:
    return sorted(p for d in TEMPLATE_DIRS for p in (topology.DEPLOY / d).rglob("*") if p.is_file())


class RenderTest(unittest.TestCase):
    def test_a_placeholder_without_a_value_is_an_error(self) -> None:
        with self.assertRaisesRegex(KeyError, "REDIS_PASSWORD"):
            templates.render_text("requirepass ${REDIS_PASSWORD}", {})

    def test_values_replace_placeholders_and_nothing_else(self) -> None:
        text = templates.render_text("a ${HOST}:${PORT} $literal %p", {"HOST": "h", "PORT": 1})
        self.assertEqual(text, "a h:1 $literal %p")

    def test_templates_use_only_braced_placeholders(self) -> None:
        # envsubst (the containers' renderer) would also replace a bare `$NAME`; ours would
        # not. Only `${NAME}` keeps the two in agreement.
        bare = re.compile(r"\$(?!\{)[A-Za-z_]")
        self.assertTrue(template_files(), "no templates found")
        for path in template_files():
            for number, line in enumerate(path.read_text().splitlines(), 1):
                with self.subTest(file=str(path.relative_to(topology.REPO)), line=number):
                    self.assertIsNone(bare.search(line), line)


if __name__ == "__main__":
    unittest.main()
