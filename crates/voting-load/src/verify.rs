//! `--verify`: from what was acknowledged, the counts that must result, checked against the
//! result service until they match or time runs out.
//!
//! A vote whose fate is unknown (a timeout, a connection lost mid-request, a 503 with
//! `Vote-Outcome: unknown`) may or may not count, so the check is a range rather than one
//! number: such votes are reported as unknown, never as lost or extra.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde::Serialize;
use voting_core::Results;

use crate::connection::Connection;
use crate::outcome::Outcome;
use crate::percentiles::Percentiles;

/// What one voter's counted vote may be: one of `options`, or nothing if `none`.
#[derive(Debug, Clone)]
pub struct Possible {
    options: Vec<usize>,
    none: bool,
}

impl Default for Possible {
    fn default() -> Self {
        Self { options: Vec::new(), none: true }
    }
}

impl Possible {
    /// Folds in the voter's next vote. Votes of one voter never overlap, so an acknowledged
    /// vote replaces whatever came before it.
    pub(crate) fn record(&mut self, option: usize, outcome: Outcome) {
        match outcome {
            Outcome::Acknowledged => {
                self.options = vec![option];
                self.none = false;
            }
            Outcome::Unknown(_) if !self.options.contains(&option) => self.options.push(option),
            Outcome::Unknown(_) | Outcome::Refused(_) => {}
        }
    }
}

/// The counts that must result, per option (in `--mix` order).
#[derive(Debug, Clone)]
pub struct Expectation {
    /// Voters whose vote is known.
    certain: Vec<u64>,
    /// Per option, how many uncertain voters might count there.
    might: Vec<u64>,
    /// Voters whose vote is uncertain, and how many of them must count somewhere.
    uncertain: u64,
    uncertain_counted_at_least: u64,
}

impl Expectation {
    pub fn new(options: usize) -> Self {
        Self {
            certain: vec![0; options],
            might: vec![0; options],
            uncertain: 0,
            uncertain_counted_at_least: 0,
        }
    }

    pub fn add(&mut self, voter: &Possible) {
        match voter.options.as_slice() {
            [] => {}
            [only] if !voter.none => self.certain[*only] += 1,
            options => {
                self.uncertain += 1;
                if !voter.none {
                    self.uncertain_counted_at_least += 1;
                }
                for option in options {
                    self.might[*option] += 1;
                }
            }
        }
    }

    /// (lost, extra) for these counts: votes missing below what is certain, and votes beyond
    /// what the certain and the uncertain together could explain.
    fn compare(&self, counted: &[i64]) -> (u64, u64) {
        let mut lost = 0i64;
        let mut extra = 0i64;
        for (option, &count) in counted.iter().enumerate() {
            lost += (self.certain[option] as i64 - count).max(0);
            extra += (count - self.certain[option] as i64 - self.might[option] as i64).max(0);
        }
        let beyond_certain = counted.iter().sum::<i64>() - self.certain.iter().sum::<u64>() as i64;
        extra = extra.max(beyond_certain - self.uncertain as i64);
        lost = lost.max(self.uncertain_counted_at_least as i64 - beyond_certain);
        (lost.max(0) as u64, extra.max(0) as u64)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    /// Votes whose counting is certain (each voter's last acknowledged vote).
    pub expected: u64,
    /// What the result service counted for this run (above its counts before the run).
    pub counted: i64,
    pub lost: u64,
    pub extra: u64,
    /// Voters whose last vote's fate is unknown; neither lost nor extra whichever way it went.
    pub unknown: u64,
    pub converged: bool,
    /// From the last vote's answer to the results matching.
    pub converge_ms: u64,
    /// From a vote's acknowledgement to the first `/events` message that includes it
    /// (only when every vote is a new voter, so each one moves the total).
    pub vote_to_screen_ms: Option<Percentiles>,
}

impl Verification {
    pub fn passed(&self) -> bool {
        self.converged && self.lost == 0 && self.extra == 0
    }
}

/// `/events` messages as they arrived: when, and the total they showed.
type EventLog = Arc<std::sync::Mutex<Vec<(Instant, u64)>>>;

/// Reads the result service before, during and after the run.
pub struct Checker {
    client: reqwest::Client,
    results_url: String,
    /// Where each `--mix` option sits in the results.
    positions: Vec<usize>,
    baseline: Vec<i64>,
    /// The `/events` log and the task that keeps it.
    events: Option<(EventLog, tokio::task::JoinHandle<()>)>,
    baseline_total: u64,
}

impl Checker {
    pub async fn start(
        result_url: &str,
        mix: &[(String, u32)],
        follow_events: bool,
        connection: &Connection,
    ) -> anyhow::Result<Self> {
        let base = result_url.trim_end_matches('/').to_owned();
        let client = connection.client().timeout(Duration::from_secs(5)).build()?;
        let results_url = format!("{base}/api/results");
        let results = fetch(&client, &results_url).await.context("reading the results before the run")?;
        let positions = mix
            .iter()
            .map(|(id, _)| {
                results
                    .options
                    .iter()
                    .position(|o| &o.id == id)
                    .with_context(|| format!("`{id}` is not on the ballot"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let baseline = positions.iter().map(|&p| results.options[p].votes as i64).collect();
        let events = if follow_events { Some(follow(&base, connection).await?) } else { None };
        Ok(Self { client, results_url, positions, baseline, events, baseline_total: results.total })
    }

    /// Waits until the counts match `expectation` or `timeout` runs out, and says how they
    /// compare; with the event log, also how long each vote took to reach the screen.
    pub async fn verify(
        &mut self,
        expectation: Expectation,
        acknowledged_at: &[Instant],
        load_ended: Instant,
        timeout: Duration,
    ) -> anyhow::Result<Verification> {
        let (counted, lost, extra) = self.wait_for_counts(&expectation, Instant::now() + timeout).await?;
        let converged = lost == 0 && extra == 0;
        let converge_ms = load_ended.elapsed().as_millis() as u64;
        let vote_to_screen_ms = match self.events.take() {
            Some(events) => self.screen_delays(events, acknowledged_at, converged).await,
            None => None,
        };
        Ok(Verification {
            expected: expectation.certain.iter().sum(),
            counted: counted.iter().sum(),
            lost,
            extra,
            unknown: expectation.uncertain,
            converged,
            converge_ms,
            vote_to_screen_ms,
        })
    }

    /// The counts of this run per option, as soon as nothing is lost or extra, or at the
    /// deadline however they are; with (lost, extra).
    async fn wait_for_counts(
        &self,
        expectation: &Expectation,
        deadline: Instant,
    ) -> anyhow::Result<(Vec<i64>, u64, u64)> {
        loop {
            let counted: Vec<i64> = match fetch(&self.client, &self.results_url).await {
                Ok(results) => self
                    .positions
                    .iter()
                    .zip(&self.baseline)
                    .map(|(&p, before)| results.options[p].votes as i64 - before)
                    .collect(),
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(error = %e, "results not readable yet");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Err(e) => return Err(e.context("reading the results")),
            };
            let (lost, extra) = expectation.compare(&counted);
            if (lost == 0 && extra == 0) || Instant::now() >= deadline {
                return Ok((counted, lost, extra));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Vote-to-screen delays from the `/events` log; once it shows every vote of the run, if
    /// the counts `converged` (else it never will).
    async fn screen_delays(
        &self,
        (events, task): (EventLog, tokio::task::JoinHandle<()>),
        acknowledged_at: &[Instant],
        converged: bool,
    ) -> Option<Percentiles> {
        // `/api/results` and `/events` may come from different replicas: give the stream a
        // moment to show what the API already does.
        let shown = self.baseline_total + acknowledged_at.len() as u64;
        let caught_up = || events.lock().expect("events lock").last().is_some_and(|&(_, t)| t >= shown);
        let wait_until = Instant::now() + Duration::from_secs(10);
        while converged && !caught_up() && Instant::now() < wait_until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        task.abort();
        let events = events.lock().expect("events lock").clone();
        vote_to_screen(acknowledged_at, &events, self.baseline_total)
    }
}

async fn fetch(client: &reqwest::Client, url: &str) -> anyhow::Result<Results> {
    let response = client.get(url).send().await?.error_for_status()?;
    Ok(response.json().await?)
}

/// Follows `/events` for the whole run and records each message, reconnecting when the stream
/// ends (a result replica stopped, a proxy restarted) as a browser's EventSource does, so the
/// log shows what an open result page showed. Returns once the first message arrived, so no
/// vote of the run can be missed.
async fn follow(
    base: &str,
    connection: &Connection,
) -> anyhow::Result<(EventLog, tokio::task::JoinHandle<()>)> {
    // No overall timeout (the stream is endless); the server's keep-alive comments every
    // 15 s keep a healthy stream under the read timeout.
    let client = connection
        .client()
        .connect_timeout(connection.connect_timeout(Duration::from_secs(30)))
        .read_timeout(Duration::from_secs(30))
        .build()?;
    let url = format!("{base}/events");
    let events = EventLog::default();
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    let recorded = events.clone();
    let task = tokio::spawn(async move {
        let mut first = Some(first_tx);
        loop {
            match client.get(&url).send().await.and_then(reqwest::Response::error_for_status) {
                Ok(response) => record_events(response, &recorded, &mut first).await,
                Err(e) => tracing::debug!(error = %e, "event stream not available"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    tokio::time::timeout(Duration::from_secs(5), first_rx).await.context("no first /events message")??;
    Ok((events, task))
}

/// Records the total of each message of one event stream until it ends.
async fn record_events(
    response: reqwest::Response,
    recorded: &EventLog,
    first: &mut Option<tokio::sync::oneshot::Sender<()>>,
) {
    let mut stream = response.bytes_stream();
    let mut buffer = String::new();
    while let Some(Ok(chunk)) = stream.next().await {
        let arrived = Instant::now();
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let message: String = buffer.drain(..end + 2).collect();
            let total = message
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .find_map(|json| serde_json::from_str::<Results>(json.trim()).ok())
                .map(|r| r.total);
            if let Some(total) = total {
                recorded.lock().expect("events lock").push((arrived, total));
                if let Some(first) = first.take() {
                    let _ = first.send(());
                }
            }
        }
    }
}

/// Pairs the k-th acknowledgement with the first message whose total includes k votes of
/// this run. Votes are applied in queue order, which is close to acknowledgement order, so
/// this is a faithful estimate rather than an exact per-vote trace.
fn vote_to_screen(
    acknowledged_at: &[Instant],
    events: &[(Instant, u64)],
    baseline_total: u64,
) -> Option<Percentiles> {
    let mut acknowledged = acknowledged_at.to_vec();
    acknowledged.sort_unstable();
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).ok()?;
    let mut next_event = 0;
    for (k, acked) in acknowledged.iter().enumerate() {
        let needed = baseline_total + k as u64 + 1;
        while next_event < events.len() && events[next_event].1 < needed {
            next_event += 1;
        }
        let (shown, _) = events.get(next_event)?;
        let delay = shown.saturating_duration_since(*acked);
        histogram.record(delay.as_micros().max(1) as u64).ok()?;
    }
    (!acknowledged.is_empty()).then(|| Percentiles::of(&histogram, 1000.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::ErrorKind;

    fn voter(votes: &[(usize, Outcome)]) -> Possible {
        let mut possible = Possible::default();
        for &(option, outcome) in votes {
            possible.record(option, outcome);
        }
        possible
    }

    #[test]
    fn the_last_acknowledged_vote_is_what_must_count() {
        let mut expectation = Expectation::new(2);
        expectation.add(&voter(&[(0, Outcome::Acknowledged), (1, Outcome::Acknowledged)]));
        expectation.add(&voter(&[(0, Outcome::Acknowledged), (1, Outcome::Refused(ErrorKind::Status4xx))]));
        assert_eq!(expectation.compare(&[1, 1]), (0, 0));
        assert_eq!(expectation.compare(&[0, 1]), (1, 0), "a missing vote is lost");
        assert_eq!(expectation.compare(&[2, 1]), (0, 1), "a vote too many is extra");
        assert_eq!(expectation.compare(&[2, 0]), (1, 1), "a vote on the wrong option is both");
    }

    #[test]
    fn a_vote_of_unknown_fate_is_neither_lost_nor_extra() {
        let mut expectation = Expectation::new(2);
        expectation.add(&voter(&[(0, Outcome::Unknown(ErrorKind::Timeout))]));
        expectation.add(&voter(&[(1, Outcome::Acknowledged), (0, Outcome::Unknown(ErrorKind::Timeout))]));
        assert_eq!(expectation.compare(&[0, 1]), (0, 0));
        assert_eq!(expectation.compare(&[2, 0]), (0, 0));
        assert_eq!(expectation.compare(&[1, 1]), (0, 0));
        assert_eq!(expectation.compare(&[0, 0]), (1, 0), "the second voter counts somewhere");
        assert_eq!(expectation.compare(&[3, 0]), (0, 1));
    }
}
