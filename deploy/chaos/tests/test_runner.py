"""How a chaos scenario's load report becomes a verdict (`voting_chaos.runner`)."""

from __future__ import annotations

import contextlib
import io
import unittest

from voting_chaos.runner import MAX_STALENESS_S, NO_OUTAGE, Row, error_of, judge, summary, table


def report(
    lost: int = 0, extra: int = 0, outage_s: float = 0.0, screen_max_ms: float | None = 100.0, converged: bool = True
) -> dict:
    screen = {"max": screen_max_ms} if screen_max_ms is not None else None
    return {
        "acknowledged": 100,
        "longest_outage_s": outage_s,
        "verify": {
            "counted": 100 - lost + extra,
            "lost": lost,
            "extra": extra,
            "unknown": 2,
            "converged": converged,
            "vote_to_screen_ms": screen,
        },
    }


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

    def test_where_no_outage_is_the_target_a_short_stall_of_the_host_is_reported_not_failed(self) -> None:
        # Every vote waited and was taken: the machine, not the system, was slow.
        stalled = dict(report(outage_s=0.8), refused=0, errors={"timeout": 0, "connect": 0})
        row = Row("s")
        judge(row, stalled, NO_OUTAGE)
        self.assertEqual(row.failures, [])
        self.assertIn("votes slowed, none refused", row.missed[0])

    def test_where_no_outage_is_the_target_refused_or_timed_out_votes_or_a_long_stall_fail(self) -> None:
        for failed in (
            dict(report(outage_s=0.8), refused=3, errors={}),
            dict(report(outage_s=0.8), refused=0, errors={"timeout": 1}),
            dict(report(outage_s=2.5), refused=0, errors={}),
        ):
            row = Row("s")
            judge(row, failed, NO_OUTAGE)
            self.assertTrue(row.failures, failed)

    def test_a_known_limit_of_staleness_alone_still_fails_a_missed_outage(self) -> None:
        row = Row("s")
        judge(row, report(outage_s=7.5, screen_max_ms=12_000), 5.0, staleness_limited_by="repmgrd's detection")
        self.assertEqual(len(row.failures), 1)
        self.assertIn("vote outage", row.failures[0])
        self.assertIn("results 12.0 s stale", row.missed[0])

    def test_nothing_acknowledged_fails(self) -> None:
        self.assertTrue(verdict(dict(report(), acknowledged=0)).failures)

    def test_the_table_shows_the_verdict(self) -> None:
        failing = verdict(report(lost=1))
        self.assertIn("| FAIL: 1 lost, 0 extra |", table([failing]))
        self.assertIn("| pass |", table([verdict(report())]))

    def test_a_row_is_one_line_whatever_its_failure_says(self) -> None:
        failing = Row("s")
        failing.failures.append("voting load printed no report: Error: reading\n\nCaused by:\n    503")
        last = table([failing]).splitlines()[-1]
        self.assertTrue(last.startswith("| s |"), last)
        self.assertIn("Error: reading Caused by: 503 |", last)


class ReportTest(unittest.TestCase):
    def test_the_summary_names_each_failure_on_a_line_of_its_own_and_sets_the_exit_status(self) -> None:
        failing = verdict(report(lost=1))
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            status = summary("suite", [verdict(report()), failing])
        self.assertEqual(status, 1)
        self.assertIn(
            "suite: 1 passed, 0 missed a timing target whose limit is known, 1 failed (s)", printed.getvalue()
        )
        self.assertIn("\n  s: 1 lost, 0 extra\n", printed.getvalue())

    def test_a_programs_error_is_kept_and_its_backtrace_dropped(self) -> None:
        stderr = (
            "Error: verifying the count\n\nCaused by:\n    connection refused\n\nStack backtrace:\n   0: <unknown>\n"
        )
        self.assertEqual(error_of(stderr), "Error: verifying the count\n\nCaused by:\n    connection refused")


if __name__ == "__main__":
    unittest.main()
