"""Unit tests of the PostgreSQL node's entrypoint: the decision table, and the files it writes.

python3 -m unittest discover -s deploy/docker/postgres
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import time
import unittest
from pathlib import Path
from unittest import mock

# pgnode and, as in the image, voting_common beside it on the path.
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "common"))

import pgnode
from pgnode import (
    CLONE,
    FOLLOW,
    INIT_PRIMARY,
    PRIMARY,
    PROMOTE,
    REJOIN,
    STANDBY,
    START_PRIMARY,
    START_STANDBY,
    UNKNOWN,
    UNREACHABLE,
    WAIT,
    Local,
    Peer,
    decide,
    without_a_leader,
)
from python_minimal import PYTHON3_MINIMAL, top_level_imports
from voting_common import render_file

TEMPLATES = Path(__file__).resolve().parents[2] / "postgres"
GRACE = 15.0


def node(name: str = "pg-1", initial: bool = True, data: bool = False, primary: bool = False) -> Local:
    return Local(name, initial, data, primary)


def down(name: str) -> Peer:
    return Peer(name, UNREACHABLE)


class AnEmptyNode(unittest.TestCase):
    def test_the_initial_primary_initialises_when_no_other_node_answers(self):
        decision = decide(node(), [down("pg-2"), down("pg-3")], 0, GRACE)
        self.assertEqual(decision.action, INIT_PRIMARY)

    def test_the_initial_primary_waits_while_another_node_answers_without_being_primary(self):
        # Its volume was lost while the others kept theirs: repmgrd promotes one, then it clones.
        decision = decide(node(), [Peer("pg-2", STANDBY, "pg-1"), down("pg-3")], 60, GRACE)
        self.assertEqual(decision.action, WAIT)

    def test_the_initial_primary_waits_while_another_node_answers_but_cannot_be_asked(self):
        decision = decide(node(), [Peer("pg-2", UNKNOWN), down("pg-3")], 60, GRACE)
        self.assertEqual(decision.action, WAIT)

    def test_another_node_never_initialises(self):
        decision = decide(node("pg-2", initial=False), [down("pg-1"), down("pg-3")], 600, GRACE)
        self.assertEqual(decision.action, WAIT)

    def test_it_clones_the_primary(self):
        decision = decide(node("pg-3", initial=False), [Peer("pg-1", PRIMARY, "pg-1"), down("pg-2")], 0, GRACE)
        self.assertEqual((decision.action, decision.primary), (CLONE, "pg-1"))

    def test_the_initial_primary_clones_a_promoted_node_rather_than_initialise(self):
        decision = decide(node(), [Peer("pg-2", PRIMARY, "pg-2"), Peer("pg-3", STANDBY, "pg-2")], 0, GRACE)
        self.assertEqual((decision.action, decision.primary), (CLONE, "pg-2"))


class ANodeWithData(unittest.TestCase):
    def test_a_former_primary_rejoins_the_promoted_standby(self):
        me = node(data=True, primary=True)
        decision = decide(me, [Peer("pg-2", PRIMARY, "pg-2"), Peer("pg-3", STANDBY, "pg-2")], 0, GRACE)
        self.assertEqual((decision.action, decision.primary), (REJOIN, "pg-2"))

    def test_a_standby_rejoins_whoever_is_primary_now(self):
        me = node("pg-3", initial=False, data=True)
        decision = decide(me, [Peer("pg-1", STANDBY, "pg-2"), Peer("pg-2", PRIMARY, "pg-2")], 0, GRACE)
        self.assertEqual((decision.action, decision.primary), (REJOIN, "pg-2"))

    def test_a_standby_starts_as_a_standby_when_no_primary_answers(self):
        me = node("pg-2", initial=False, data=True)
        decision = decide(me, [down("pg-1"), down("pg-3")], 0, GRACE)
        self.assertEqual(decision.action, START_STANDBY)

    def test_a_former_primary_never_starts_as_primary_before_the_grace_period_is_over(self):
        me = node(data=True, primary=True)
        peers = [Peer("pg-2", STANDBY, "pg-1"), Peer("pg-3", STANDBY, "pg-1")]
        self.assertEqual(decide(me, peers, GRACE - 1, GRACE).action, WAIT)

    def test_a_former_primary_starts_as_primary_when_a_majority_agrees_after_the_grace_period(self):
        # A cold start of the whole cluster: the standbys are up, nobody was promoted.
        me = node(data=True, primary=True)
        peers = [Peer("pg-2", STANDBY, "pg-1"), down("pg-3")]
        self.assertEqual(decide(me, peers, GRACE, GRACE).action, START_PRIMARY)

    def test_a_former_primary_alone_never_starts_as_primary(self):
        me = node(data=True, primary=True)
        self.assertEqual(decide(me, [down("pg-2"), down("pg-3")], 3600, GRACE).action, WAIT)

    def test_a_former_primary_waits_when_a_standby_names_another_primary(self):
        # pg-2 was promoted and died; pg-3 followed it. pg-2 has the newest data: wait for it.
        me = node(data=True, primary=True)
        peers = [down("pg-2"), Peer("pg-3", STANDBY, "pg-2")]
        decision = decide(me, peers, 3600, GRACE)
        self.assertEqual(decision.action, WAIT)
        self.assertIn("pg-2", decision.reason)

    def test_the_promoted_node_that_died_starts_as_primary_again(self):
        me = node("pg-2", initial=False, data=True, primary=True)
        peers = [down("pg-1"), Peer("pg-3", STANDBY, "pg-2")]
        self.assertEqual(decide(me, peers, GRACE, GRACE).action, START_PRIMARY)

    def test_standbys_that_cannot_be_asked_do_not_count_towards_a_majority(self):
        me = node(data=True, primary=True)
        peers = [Peer("pg-2", UNKNOWN), Peer("pg-3", UNKNOWN)]
        self.assertEqual(decide(me, peers, 3600, GRACE).action, WAIT)


class SeveralPrimaries(unittest.TestCase):
    def test_a_node_never_picks_between_two_primaries(self):
        for me in (node(), node(data=True), node(data=True, primary=True)):
            peers = [Peer("pg-2", PRIMARY, "pg-2"), Peer("pg-3", PRIMARY, "pg-3")]
            self.assertEqual(decide(me, peers, 3600, GRACE).action, WAIT)


class NoDecisionMakesASecondPrimary(unittest.TestCase):
    def test_every_combination_of_peer_states(self):
        """Whatever the others say, a node starts as primary only when no other node is primary."""
        states = [UNREACHABLE, UNKNOWN, STANDBY, PRIMARY]
        records = [None, "pg-1", "pg-2", "pg-3"]
        for data in (False, True):
            for was_primary in (False, True) if data else (False,):
                for s2 in states:
                    for s3 in states:
                        for r2 in records:
                            for r3 in records:
                                peers = [Peer("pg-2", s2, r2), Peer("pg-3", s3, r3)]
                                decision = decide(node(data=data, primary=was_primary), peers, 3600, GRACE)
                                if decision.action in (INIT_PRIMARY, START_PRIMARY):
                                    self.assertNotIn(PRIMARY, (s2, s3), (data, was_primary, peers))


class AResumedPrimary(unittest.TestCase):
    """superseded_by: a running primary steps down only for a primary promoted after it."""

    def test_steps_down_for_a_primary_on_a_newer_timeline(self):
        peers = [Peer("pg-2", PRIMARY, "pg-2", 3), Peer("pg-3", STANDBY, "pg-2", 3)]
        self.assertEqual(pgnode.superseded_by(2, peers), "pg-2")

    def test_the_promoted_node_stays_when_a_standby_still_names_the_old_primary(self):
        # A node cut off and healed: the old primary is back on its old timeline, and the
        # standby that had not yet followed the promotion still carries the old metadata.
        peers = [Peer("pg-1", PRIMARY, "pg-1", 2), Peer("pg-3", STANDBY, "pg-1", 2)]
        self.assertIsNone(pgnode.superseded_by(3, peers))

    def test_the_old_primary_steps_down_in_that_case(self):
        peers = [Peer("pg-2", PRIMARY, "pg-2", 3), Peer("pg-3", STANDBY, "pg-1", 2)]
        self.assertEqual(pgnode.superseded_by(2, peers), "pg-2")

    def test_steps_down_for_the_newest_of_several(self):
        peers = [Peer("pg-2", PRIMARY, "pg-2", 3), Peer("pg-3", PRIMARY, "pg-3", 4)]
        self.assertEqual(pgnode.superseded_by(2, peers), "pg-3")

    def test_stays_while_the_standbys_follow_it(self):
        peers = [Peer("pg-2", STANDBY, "pg-1", 2), Peer("pg-3", STANDBY, "pg-1", 2)]
        self.assertIsNone(pgnode.superseded_by(2, peers))

    def test_stays_for_a_primary_on_the_same_or_an_older_timeline(self):
        self.assertIsNone(pgnode.superseded_by(2, [Peer("pg-2", PRIMARY, "pg-2", 2), down("pg-3")]))
        self.assertIsNone(pgnode.superseded_by(2, [Peer("pg-2", PRIMARY, "pg-2", 1), down("pg-3")]))

    def test_stays_when_cut_off_from_everyone(self):
        self.assertIsNone(pgnode.superseded_by(2, [down("pg-2"), down("pg-3")]))

    def test_an_unknown_timeline_supersedes_nothing(self):
        self.assertIsNone(pgnode.superseded_by(None, [Peer("pg-2", PRIMARY, "pg-2", 3), down("pg-3")]))
        self.assertIsNone(pgnode.superseded_by(2, [Peer("pg-2", PRIMARY, "pg-2", None), down("pg-3")]))


NODES = ("pg-1", "pg-2", "pg-3")


def standby(name: str, lsn: int | None, timeline: int = 2) -> Peer:
    return Peer(name, STANDBY, "pg-1", timeline, lsn)


class AStandbyWithoutALeader(unittest.TestCase):
    """without_a_leader: what a standby that has streamed from no primary for a while does."""

    def test_the_standby_furthest_ahead_promotes_itself(self):
        peers = [Peer("pg-1", UNKNOWN), standby("pg-3", 900)]
        self.assertEqual(without_a_leader("pg-2", 1000, 2, NODES, peers).action, PROMOTE)

    def test_the_one_behind_waits_for_it(self):
        decision = without_a_leader("pg-3", 900, 2, NODES, [Peer("pg-1", UNKNOWN), standby("pg-2", 1000)])
        self.assertEqual((decision.action, decision.primary), (WAIT, "pg-2"))

    def test_a_tie_goes_to_the_lower_node_id_as_in_repmgr(self):
        self.assertEqual(
            without_a_leader("pg-2", 1000, 2, NODES, [down("pg-1"), standby("pg-3", 1000)]).action, PROMOTE
        )
        self.assertEqual(without_a_leader("pg-3", 1000, 2, NODES, [down("pg-1"), standby("pg-2", 1000)]).action, WAIT)

    def test_exactly_one_of_the_standbys_promotes_whatever_their_positions(self):
        for lsn_2 in (900, 1000, 1100):
            for lsn_3 in (900, 1000, 1100):
                from_2 = without_a_leader("pg-2", lsn_2, 2, NODES, [down("pg-1"), standby("pg-3", lsn_3)])
                from_3 = without_a_leader("pg-3", lsn_3, 2, NODES, [down("pg-1"), standby("pg-2", lsn_2)])
                promoted = [d for d in (from_2, from_3) if d.action == PROMOTE]
                self.assertEqual(len(promoted), 1, (lsn_2, lsn_3))

    def test_a_standby_alone_never_promotes(self):
        # Cut off with the primary gone, or the only one left: no majority, no election.
        for others in ([down("pg-1"), down("pg-3")], [Peer("pg-1", UNKNOWN), Peer("pg-3", UNKNOWN)]):
            self.assertEqual(without_a_leader("pg-2", 1000, 2, NODES, others).action, WAIT)

    def test_a_peer_whose_position_is_unknown_does_not_vote(self):
        self.assertEqual(without_a_leader("pg-2", 1000, 2, NODES, [down("pg-1"), standby("pg-3", None)]).action, WAIT)

    def test_nor_does_a_node_that_does_not_know_its_own(self):
        self.assertEqual(without_a_leader("pg-2", None, 2, NODES, [down("pg-1"), standby("pg-3", 900)]).action, WAIT)

    def test_it_follows_the_one_primary_that_answers(self):
        peers = [Peer("pg-1", UNKNOWN), Peer("pg-3", PRIMARY, "pg-3", 3)]
        decision = without_a_leader("pg-2", 1000, 2, NODES, peers)
        self.assertEqual((decision.action, decision.primary), (FOLLOW, "pg-3"))

    def test_it_never_follows_a_primary_on_an_older_timeline(self):
        # A former primary that resumed and has not yet noticed it was superseded.
        peers = [Peer("pg-1", PRIMARY, "pg-1", 2), Peer("pg-3", UNKNOWN)]
        self.assertEqual(without_a_leader("pg-2", 1000, 3, NODES, peers).action, WAIT)

    def test_it_never_picks_between_two_primaries(self):
        peers = [Peer("pg-1", PRIMARY, "pg-1", 2), Peer("pg-3", PRIMARY, "pg-3", 3)]
        self.assertEqual(without_a_leader("pg-2", 1000, 2, NODES, peers).action, WAIT)

    def test_it_promotes_only_when_no_peer_is_primary(self):
        states = [UNREACHABLE, UNKNOWN, STANDBY, PRIMARY]
        for s1 in states:
            for s3 in states:
                peers = [Peer("pg-1", s1, "pg-1", 2, 900), Peer("pg-3", s3, "pg-1", 2, 900)]
                if without_a_leader("pg-2", 1000, 2, NODES, peers).action == PROMOTE:
                    self.assertNotIn(PRIMARY, (s1, s3), peers)


class RejoiningNode(pgnode.Node):
    """A node whose rewind fails; it records what it does instead of doing it."""

    def __init__(self, primary_state: str):
        self.primary_state = primary_state
        self.done: list[str] = []

    def data_dir_state(self) -> str:
        return "shut down in recovery"

    def local(self) -> Local:
        return Local("pg-1", False, True, self.was_primary)

    was_primary = False

    def _rewind_onto(self, primary: str, state: str) -> None:
        self.done.append(f"rewind {primary}")
        raise RuntimeError("pg_ctl exited with 1")

    def stop_postgres(self) -> None:
        self.done.append("stop")

    def _await_streaming(self, primary: str, timeout: float) -> None:
        self.done.append("await streaming")

    def probe(self, host: str) -> Peer:
        return Peer(host, self.primary_state)

    def clone(self, primary: str) -> None:
        self.done.append(f"clone {primary}")


class ARejoinThatFails(unittest.TestCase):
    """The data directory pg_rewind cannot bring back: a fresh clone, only from a live primary."""

    def test_clones_the_primary_that_still_answers(self):
        fake = RejoiningNode(PRIMARY)
        fake.rejoin("pg-2")
        self.assertEqual(fake.done, ["rewind pg-2", "stop", "clone pg-2"])

    def test_clones_when_the_rewound_standby_never_streams(self):
        class NeverStreams(RejoiningNode):
            def _rewind_onto(self, primary: str, state: str) -> None:
                self.done.append(f"rewind {primary}")

            def _await_streaming(self, primary: str, timeout: float) -> None:
                raise RuntimeError("not streaming")

        fake = NeverStreams(PRIMARY)
        fake.rejoin("pg-2")
        self.assertEqual(fake.done, ["rewind pg-2", "stop", "clone pg-2"])

    def test_a_killed_primary_is_cloned_without_a_rewind(self):
        class KilledPrimary(RejoiningNode):
            was_primary = True

            def data_dir_state(self) -> str:
                return "in production"

        fake = KilledPrimary(PRIMARY)
        fake.rejoin("pg-2")
        self.assertEqual(fake.done, ["clone pg-2"])

    def test_a_primary_that_stepped_down_cleanly_is_cloned_too(self):
        class SupersededPrimary(RejoiningNode):
            was_primary = True

            def data_dir_state(self) -> str:
                return "shut down"

        fake = SupersededPrimary(PRIMARY)
        fake.rejoin("pg-2")
        self.assertEqual(fake.done, ["clone pg-2"])

    def test_keeps_its_data_when_the_primary_went_away(self):
        fake = RejoiningNode(UNREACHABLE)
        with self.assertRaises(RuntimeError):
            fake.rejoin("pg-2")
        self.assertEqual(fake.done, ["rewind pg-2", "stop"])


class Helpers(unittest.TestCase):
    def test_probe_output(self):
        self.assertEqual(pgnode.parse_probe("f|pg-1|3|\n"), (PRIMARY, "pg-1", 3, None))
        self.assertEqual(pgnode.parse_probe("t|pg-2|2|83886080\n"), (STANDBY, "pg-2", 2, 83886080))
        self.assertEqual(pgnode.parse_probe("t|||\n"), (STANDBY, None, None, None))
        self.assertEqual(pgnode.parse_probe(""), (UNKNOWN, None, None, None))

    def test_cluster_state_of_pg_controldata(self):
        text = "pg_control version number:            1300\nDatabase cluster state:               in production\n"
        self.assertEqual(pgnode.cluster_state(text), "in production")
        self.assertFalse(pgnode.shut_down_cleanly("in production"))
        self.assertTrue(pgnode.shut_down_cleanly("shut down in recovery"))
        self.assertEqual(pgnode.cluster_state("garbage"), "unknown")

    def test_sql_quoting(self):
        self.assertEqual(pgnode.sql_literal("it's"), "'it''s'")
        self.assertEqual(pgnode.sql_identifier('a"b'), '"a""b"')
        with self.assertRaises(ValueError):
            pgnode.sql_literal("a\0b")

    def test_pgpass_escapes_colons_and_backslashes(self):
        self.assertEqual(pgnode.pgpass_line("*", "repmgr", "repmgr", "p:w\\d"), "*:*:repmgr:repmgr:p\\:w\\\\d")


def environment(**overrides: str) -> dict[str, str]:
    env = {
        "NODE_ID": "2",
        "NODE_NAME": "pg-2",
        "NODES": "pg-1, pg-2,pg-3",
        "DATABASE": "voting",
        "DATABASE_USER": "voting",
        "REPMGR_PASSWORD": "pw-repmgr",
        "DATABASE_PASSWORD": "pw-voting",
        "DATABASE_WORKER_PASSWORD": "pw-worker",
        "DATABASE_RESULT_PASSWORD": "pw-result",
        "DATABASE_CERTS_PASSWORD": "pw-certs",
        "PGPOOL_CHECK_PASSWORD": "pw-check",
    }
    env.update(overrides)
    return env


class Configuration(unittest.TestCase):
    def test_settings_from_the_environment(self):
        settings = pgnode.settings_from(environment())
        self.assertEqual(settings.nodes, ("pg-1", "pg-2", "pg-3"))
        self.assertEqual(settings.peers, ("pg-1", "pg-3"))
        self.assertEqual(settings.initial_primary, "pg-1")
        self.assertEqual(settings.cluster_subnet, "samenet")

    def test_a_password_file_wins_and_loses_its_newline(self):
        with tempfile.NamedTemporaryFile("w", delete=False) as file:
            file.write("from-file\n")
        try:
            settings = pgnode.settings_from(environment(REPMGR_PASSWORD_FILE=file.name))
            self.assertEqual(settings.repmgr_password, "from-file")
        finally:
            os.unlink(file.name)

    def test_missing_or_inconsistent_settings_are_refused(self):
        for bad in (
            environment(NODE_NAME="pg-9"),
            environment(NODES="pg-1,pg-2"),
            environment(DATABASE_PASSWORD=""),
            environment(DATABASE_CERTS_PASSWORD=""),
            environment(INITIAL_PRIMARY="pg-7"),
            environment(NODE_ID="3"),
        ):
            with self.assertRaises(ValueError):
                pgnode.settings_from(bad)

    def test_every_placeholder_of_the_templates_has_a_value(self):
        values = pgnode.template_values(pgnode.settings_from(environment()))
        for name in ("postgresql.conf", "pg_hba.conf", "repmgr.conf"):
            text = render_file(str(TEMPLATES / name), values)
            self.assertNotIn("${", text)

    def test_the_node_names_its_own_files(self):
        values = pgnode.template_values(pgnode.settings_from(environment()))
        repmgr = render_file(str(TEMPLATES / "repmgr.conf"), values)
        self.assertIn("node_id=2", repmgr)
        self.assertIn("node_name='pg-2'", repmgr)
        self.assertIn("host=pg-2 ", repmgr)

    def test_bootstrap_sql_quotes_passwords(self):
        settings = pgnode.settings_from(environment(REPMGR_PASSWORD="r'pw", DATABASE_WORKER_PASSWORD="w'pw"))
        sql = pgnode.bootstrap_sql(settings)
        self.assertIn("PASSWORD 'r''pw'", sql)
        self.assertIn("PASSWORD 'w''pw'", sql)

    def test_the_postgres_superuser_gets_no_password_and_no_network_login(self):
        settings = pgnode.settings_from(environment())
        self.assertNotIn("postgres", pgnode.bootstrap_sql(settings).replace("CREATE DATABASE", ""))
        hba = render_file(str(TEMPLATES / "pg_hba.conf"), pgnode.template_values(settings))
        lines = [line.split() for line in hba.splitlines() if line.strip() and not line.startswith("#")]
        superuser = [line for line in lines if "postgres" in line[2].split(",")]
        self.assertEqual(superuser, [["local", "all", "postgres", "peer"]])


class ACloneNamesItsUpstream(unittest.TestCase):
    def test_the_node_it_clones_is_its_upstream_whatever_the_metadata_says(self):
        commands: list[list[str]] = []

        class Recording(pgnode.Node):
            def wipe_data_dir(self) -> None:
                pass

            def start_postgres(self) -> None:
                pass

            def _repmgr(self, arguments: list[str], env: dict[str, str] | None = None) -> None:
                commands.append(arguments)

        Recording(pgnode.settings_from(environment())).clone("pg-3")
        self.assertIn("standby", commands[0])
        self.assertIn("clone", commands[0])
        self.assertIn("--upstream-node-id=3", commands[0])
        self.assertEqual(commands[1], ["standby", "register", "--force", "--upstream-node-id=3"])


class OneEntrypointPerVolume(unittest.TestCase):
    def test_a_second_entrypoint_waits_until_the_first_lets_go_of_the_volume(self):
        volume = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, volume)
        settings = pgnode.settings_from(environment(PGDATA=os.path.join(volume, "pgdata")))
        logged: list[str] = []
        patch = mock.patch.object(pgnode, "log", logged.append)
        patch.start()
        self.addCleanup(patch.stop)

        first = pgnode.Node(settings).hold_volume()
        second = threading.Thread(target=pgnode.Node(settings).hold_volume)
        second.start()
        deadline = time.monotonic() + 10
        while not any("waiting" in line for line in logged) and time.monotonic() < deadline:
            time.sleep(0.01)
        self.assertTrue(second.is_alive(), "the second holds the volume while the first does")
        os.close(first)  # the first container's entrypoint ends
        second.join(10)
        self.assertFalse(second.is_alive())
        self.assertEqual(logged[-1], "the volume is this container's now")


class TheImageHasOnlyPythonMinimal(unittest.TestCase):
    def test_imports(self):
        # voting_common is copied into the image beside it.
        allowed = PYTHON3_MINIMAL | {"voting_common"}
        self.assertLessEqual(top_level_imports(Path(pgnode.__file__)), allowed)


if __name__ == "__main__":
    unittest.main()
