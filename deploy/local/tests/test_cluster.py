"""The cluster's secrets: long enough for the services, readable by root and postgres only."""

from __future__ import annotations

import os
import pwd
import stat
import tempfile
import unittest
from pathlib import Path

from voting_cluster.cluster import SECRETS_OWNER, Cluster


def _owner_exists() -> bool:
    try:
        pwd.getpwnam(SECRETS_OWNER)
        return True
    except KeyError:
        return False


@unittest.skipUnless(os.geteuid() == 0 and _owner_exists(), f"needs root and a {SECRETS_OWNER} user")
class SecretTest(unittest.TestCase):
    def setUp(self) -> None:
        directory = tempfile.TemporaryDirectory()
        self.addCleanup(directory.cleanup)
        self.cluster = Cluster(Path(directory.name))

    def test_secrets_are_private_to_root_and_postgres(self) -> None:
        path = self.cluster.secret_file("redis_password")
        owner = pwd.getpwnam(SECRETS_OWNER).pw_uid
        for entry, mode in ((self.cluster.secrets_dir, 0o700), (path, 0o600)):
            with self.subTest(path=str(entry)):
                info = entry.stat()
                self.assertEqual(stat.S_IMODE(info.st_mode), mode)
                self.assertEqual(info.st_uid, owner)

    def test_the_cookie_key_has_32_bytes_and_passwords_16(self) -> None:
        self.assertEqual(len(self.cluster.secret("cookie_secret")), 64)
        self.assertEqual(len(self.cluster.secret("redis_password")), 32)

    def test_a_secret_is_made_once(self) -> None:
        self.assertEqual(self.cluster.secret("cookie_secret"), self.cluster.secret("cookie_secret"))

    def test_a_short_cookie_key_is_made_anew_but_a_password_is_kept(self) -> None:
        self.cluster.secret("redis_password")
        for name in ("cookie_secret", "redis_password"):
            (self.cluster.secrets_dir / name).write_text("0123456789abcdef" * 2 + "\n")
        self.assertEqual(len(self.cluster.secret("cookie_secret")), 64)
        self.assertEqual(self.cluster.secret("redis_password"), "0123456789abcdef" * 2)


if __name__ == "__main__":
    unittest.main()
