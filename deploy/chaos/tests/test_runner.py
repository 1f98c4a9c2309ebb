"""How a chaos scenario's load report becomes a verdict (`voting_chaos.runner`)."""

from __future__ import annotations

import unittest

from voting_chaos.runner import MAX_STALENESS_S, Row, judge, table


def report(lost: int = 0, extra: int = 0, outage_s: float = 0.0, screen_max_ms: float | None = 100.0,
           converged: bool = True) -> dict:
    screen = {"max": screen_max_ms} if screen_max_ms is not None else None
    return {"acknowledged": 100, "longest_outage_s": outage_s,
            "verify": {"counted": 100 - lost + extra, "lost": lost, "extra": extra, "unknown": 2,
                       "converged": converged, "vote_to_screen_ms": screen}}


def verdict(data: dict, held_back_s: float | None = None, strict: bool = False, limited_by: str | None = None) -> Row:
    row = Row("s")
    judge(row, data, 5.0, held_back_s, strict=strict, limited_by=limited_by)
    return row


class VerdictTest(unittest.TestCase):
    def test_a_clean_run_passes(self) -> None:
        row = verdict(report(outage_s=3.2))
        self.assertEqual(row.failures, [])
        self.assertEqual((row.acknowledged, row.counted, row.unknown), (100, 100, 2))

    def test_a_lost_or_extra_vote_fails(self) -> None:
        self.assertIn("1 lost, 0 extra", verdict(report(lost=1)).failures)
        self.assertIn("0 lost, 1 extra", verdict(report(extra=1)).failures)

    def test_results_that_never_converge_fail(self) -> None:
        self.assertTrue(verdict(report(converged=False)).failures)

    def test_missing_a_target_fails(self) -> None:
        self.assertTrue(verdict(report(outage_s=5.5)).failures, "vote outage over the scenario's target")
        self.assertTrue(verdict(report(screen_max_ms=MAX_STALENESS_S * 1000 + 1)).failures, "stale results")
        self.assertTrue(verdict(report(screen_max_ms=None)).failures, "votes never shown")

    def test_votes_held_back_count_as_staleness(self) -> None:
        row = verdict(report(screen_max_ms=100), held_back_s=MAX_STALENESS_S + 1)
        self.assertEqual(row.staleness_s, MAX_STALENESS_S + 1)
        self.assertEqual(len(row.failures), 1)

    def test_strict_scenarios_fail_on_any_failed_request(self) -> None:
        clean = dict(report(), errors={"timeout": 0}, refused=0, unknown=0)
        self.assertEqual(verdict(clean, strict=True).failures, [])
        self.assertTrue(verdict(dict(clean, errors={"timeout": 1}), strict=True).failures)
        self.assertTrue(verdict(dict(clean, unknown=1), strict=True).failures)
        self.assertEqual(verdict(dict(clean, unknown=1)).failures, [], "only strict scenarios count them")

    def test_a_known_limit_reports_a_missed_timing_target_without_failing(self) -> None:
        row = verdict(report(outage_s=7.5, screen_max_ms=12_000), limited_by="one Pgpool-II")
        self.assertEqual(row.failures, [])
        self.assertEqual(len(row.missed), 2)
        self.assertIn("2.50 s over 5 s", row.missed[0])
        self.assertIn("| target missed: vote outage 7.50 s", table([row]))

    def test_a_known_limit_never_excuses_a_lost_vote(self) -> None:
        row = verdict(report(lost=1, outage_s=7.5), limited_by="one Pgpool-II")
        self.assertIn("1 lost, 0 extra", row.failures)

    def test_nothing_acknowledged_fails(self) -> None:
        self.assertTrue(verdict(dict(report(), acknowledged=0)).failures)

    def test_the_table_shows_the_verdict(self) -> None:
        failing = verdict(report(lost=1))
        self.assertIn("| FAIL: 1 lost, 0 extra |", table([failing]))
        self.assertIn("| pass |", table([verdict(report())]))


if __name__ == "__main__":
    unittest.main()
