//! The report of a load run: a table for people, JSON for machines (`--json`).

use std::fmt;

use serde::Serialize;

use crate::outcome::ErrorKind;
use crate::percentiles::Percentiles;
use crate::verify::Verification;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub sent: u64,
    pub acknowledged: u64,
    /// Certainly not recorded: 4xx, 503, connection refused.
    pub refused: u64,
    /// Maybe recorded: timeouts, broken connections, 503 with `Vote-Outcome: unknown`, other 5xx.
    pub unknown: u64,
    pub errors: ErrorCounts,
    pub elapsed_s: f64,
    /// Acknowledged votes per second.
    pub throughput_per_s: f64,
    /// Latency of acknowledged votes; in open loop, from when each vote was due.
    pub latency_ms: Percentiles,
    /// The longest stretch with no vote acknowledged (0 when there was none of 500 ms).
    pub longest_outage_s: f64,
    /// Every stretch of at least 500 ms with no vote acknowledged, from the start of the run.
    pub outages: Vec<Outage>,
    pub verify: Option<Verification>,
}

/// A stretch with no vote acknowledged, in seconds from the start of the run.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Outage {
    pub from_s: f64,
    pub to_s: f64,
}

impl Outage {
    pub fn seconds(&self) -> f64 {
        self.to_s - self.from_s
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ErrorCounts {
    pub connect: u64,
    pub timeout: u64,
    pub status_4xx: u64,
    pub status_5xx: u64,
    pub other: u64,
}

impl ErrorCounts {
    pub(crate) fn count(&mut self, kind: ErrorKind) {
        *match kind {
            ErrorKind::Connect => &mut self.connect,
            ErrorKind::Timeout => &mut self.timeout,
            ErrorKind::Status4xx => &mut self.status_4xx,
            ErrorKind::Status5xx => &mut self.status_5xx,
            ErrorKind::Other => &mut self.other,
        } += 1;
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = &self.errors;
        writeln!(
            f,
            "votes        sent {}  acknowledged {}  refused {}  unknown {}",
            self.sent, self.acknowledged, self.refused, self.unknown
        )?;
        writeln!(
            f,
            "errors       connect {}  timeout {}  4xx {}  5xx {}  other {}",
            e.connect, e.timeout, e.status_4xx, e.status_5xx, e.other
        )?;
        writeln!(f, "throughput   {:.0} votes/s over {:.2} s", self.throughput_per_s, self.elapsed_s)?;
        writeln!(f, "latency ms   {}", self.latency_ms)?;
        if !self.outages.is_empty() {
            let spans: Vec<String> =
                self.outages.iter().map(|o| format!("{:.1}–{:.1} s", o.from_s, o.to_s)).collect();
            writeln!(f, "outages      longest {:.2} s: {}", self.longest_outage_s, spans.join(", "))?;
        }
        if let Some(v) = &self.verify {
            writeln!(
                f,
                "verify       acknowledged {}  expected {}  counted {}  lost {}  extra {}  unknown {}  {} in {} ms",
                self.acknowledged,
                v.expected,
                v.counted,
                v.lost,
                v.extra,
                v.unknown,
                if v.converged { "converged" } else { "NOT converged" },
                v.converge_ms
            )?;
            if let Some(delay) = &v.vote_to_screen_ms {
                writeln!(f, "vote→screen  ms {delay}")?;
            }
        }
        Ok(())
    }
}
