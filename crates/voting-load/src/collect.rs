//! Folds the outcome of every vote of a run into its report, and shows progress meanwhile.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};

use crate::outcome::Outcome;
use crate::percentiles::Percentiles;
use crate::report::{ErrorCounts, Outage, Report};
use crate::verify::{Expectation, Possible, Verification};

/// One completed vote, as the collector sees it.
pub(crate) struct Sample {
    pub option: usize,
    pub outcome: Outcome,
    pub latency: Duration,
    pub finished: Instant,
    /// For a new voter (no `--voters`), what their vote may be; for `--voters` the voter's
    /// state is kept with the voter instead.
    pub new_voter: Option<Possible>,
}

/// Everything the collector accumulates.
pub(crate) struct Collected {
    acknowledged: u64,
    refused: u64,
    unknown: u64,
    errors: ErrorCounts,
    latency_us: Histogram<u64>,
    /// When each acknowledged vote was answered, for the vote-to-screen delay.
    pub acknowledged_at: Vec<Instant>,
    /// What the new voters' votes must add up to (`--voters` keeps its own).
    pub expectation: Expectation,
    per_option: Vec<u64>,
}

impl Collected {
    pub fn new(options: usize) -> Self {
        Self {
            acknowledged: 0,
            refused: 0,
            unknown: 0,
            errors: ErrorCounts::default(),
            latency_us: Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds"),
            acknowledged_at: Vec::new(),
            expectation: Expectation::new(options),
            per_option: vec![0; options],
        }
    }

    pub fn add(&mut self, sample: Sample) {
        match sample.outcome {
            Outcome::Acknowledged => {
                self.acknowledged += 1;
                self.per_option[sample.option] += 1;
                let _ = self.latency_us.record(sample.latency.as_micros().max(1) as u64);
                self.acknowledged_at.push(sample.finished);
            }
            Outcome::Refused(kind) => {
                self.refused += 1;
                self.errors.count(kind);
            }
            Outcome::Unknown(kind) => {
                self.unknown += 1;
                self.errors.count(kind);
            }
        }
        if let Some(possible) = &sample.new_voter {
            self.expectation.add(possible);
        }
    }

    fn completed(&self) -> u64 {
        self.acknowledged + self.refused + self.unknown
    }

    pub fn report(
        &self,
        sent: u64,
        started: Instant,
        ended: Instant,
        verify: Option<Verification>,
    ) -> Report {
        let elapsed = ended - started;
        let outages = outages(&self.acknowledged_at, started, ended);
        Report {
            sent,
            acknowledged: self.acknowledged,
            refused: self.refused,
            unknown: self.unknown,
            errors: self.errors.clone(),
            elapsed_s: elapsed.as_secs_f64(),
            throughput_per_s: self.acknowledged as f64 / elapsed.as_secs_f64().max(1e-9),
            latency_ms: Percentiles::of(&self.latency_us, 1000.0),
            longest_outage_s: outages.iter().map(Outage::seconds).fold(0.0, f64::max),
            outages,
            verify,
        }
    }
}

/// Stretches of at least [`OUTAGE_AT_LEAST`] in which no vote was acknowledged, whether
/// votes were refused, failed or just hung: what a voter would call "voting was down".
fn outages(acknowledged_at: &[Instant], started: Instant, ended: Instant) -> Vec<Outage> {
    const OUTAGE_AT_LEAST: Duration = Duration::from_millis(500);
    let mut moments = acknowledged_at.to_vec();
    moments.sort_unstable();
    let since_start = |t: Instant| t.saturating_duration_since(started).as_secs_f64();
    std::iter::once(started)
        .chain(moments)
        .chain(std::iter::once(ended))
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|pair| pair[1] - pair[0] >= OUTAGE_AT_LEAST)
        .map(|pair| Outage { from_s: since_start(pair[0]), to_s: since_start(pair[1]) })
        .collect()
}

/// A progress bar on a terminal, a plain line every few seconds otherwise.
#[derive(Clone)]
pub(crate) struct Progress {
    bar: Option<ProgressBar>,
    started: Instant,
    last_line: Arc<std::sync::Mutex<Instant>>,
}

impl Progress {
    pub fn new(bar: bool, votes: Option<u64>) -> Self {
        let bar = bar.then(|| {
            let bar = votes.map_or_else(ProgressBar::no_length, ProgressBar::new);
            bar.set_style(
                ProgressStyle::with_template(
                    "{elapsed_precise} [{wide_bar}] {pos}/{len} {per_sec} eta {eta} {msg}",
                )
                .expect("progress template"),
            );
            bar
        });
        Self { bar, started: Instant::now(), last_line: Arc::new(std::sync::Mutex::new(Instant::now())) }
    }

    pub fn update(&self, collected: &Collected) {
        let errors = collected.refused + collected.unknown;
        if let Some(bar) = &self.bar {
            bar.set_position(collected.completed());
            if errors > 0 {
                bar.set_message(format!("errors {errors}"));
            }
            return;
        }
        let mut last = self.last_line.lock().expect("progress lock");
        if last.elapsed() >= Duration::from_secs(5) {
            *last = Instant::now();
            let elapsed = self.started.elapsed().as_secs_f64();
            eprintln!(
                "{elapsed:.1}s: {} votes, {:.0}/s, {errors} errors",
                collected.completed(),
                collected.completed() as f64 / elapsed
            );
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outages_are_the_gaps_between_acknowledgements() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let found = outages(&[at(100), at(300), at(2300), at(2400)], t0, at(3500));
        let spans: Vec<(f64, f64)> = found.iter().map(|o| (o.from_s, o.to_s)).collect();
        assert_eq!(spans, vec![(0.3, 2.3), (2.4, 3.5)]);
        assert!(outages(&[], t0, at(200)).is_empty(), "a run shorter than an outage has none");
        assert_eq!(outages(&[], t0, at(900)).len(), 1, "nothing acknowledged at all is an outage");
    }
}
