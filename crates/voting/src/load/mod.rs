//! `voting load`: a load generator for the vote service, and a checker that what was
//! acknowledged is exactly what gets counted.
//!
//! Votes go out closed-loop (`--concurrency` at a time) or open-loop at `--rate` per second;
//! in open loop each latency is measured from when the vote was due, not when it was sent,
//! so a stalled server shows as latency instead of silently slowing the load (no coordinated
//! omission). With `--voters M`, M voters with their own cookies vote in turn and change
//! their minds; one voter never has two votes in flight, so "their last acknowledged vote"
//! is well defined. Every run is bounded by `--votes` and/or `--duration`.

mod connection;
mod report;
mod verify;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::StatusCode;
use tokio::sync::{Mutex, Semaphore, mpsc};

pub use self::connection::{Connection, parse_resolve};
pub use self::report::{ErrorCounts, Outage, Percentiles, Report};
pub use self::verify::Verification;
use self::verify::{Expectation, Possible};

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    /// Base URL of the vote service.
    pub url: String,
    pub votes: Option<u64>,
    pub duration: Option<Duration>,
    pub concurrency: usize,
    /// Votes per second, open loop; `None` for closed loop.
    pub rate: Option<f64>,
    /// Distinct voters who vote in turn; `None`: every vote is a new voter.
    pub voters: Option<u64>,
    /// Option ids and their weights.
    pub mix: Vec<(String, u32)>,
    /// Post the original app's form (`POST /`, `vote=a`) instead of the JSON API.
    pub form: bool,
    /// Per-request timeout; a vote that times out may or may not have been recorded.
    pub timeout: Duration,
    /// Result service to check the counts against.
    pub verify: Option<String>,
    /// How long to wait for the results to converge.
    pub verify_timeout: Duration,
    /// Extra trusted roots and pinned addresses.
    pub connection: Connection,
    /// Draw a progress bar (on a terminal) rather than plain lines.
    pub progress_bar: bool,
}

/// What became of one vote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// 2xx: counted for sure.
    Acknowledged,
    /// Certainly not recorded: a 4xx, a plain 503, or no connection at all.
    Refused(ErrorKind),
    /// Maybe recorded: a timeout, a connection lost mid-request, a 503 saying the outcome is
    /// unknown, or another 5xx.
    Unknown(ErrorKind),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ErrorKind {
    Connect,
    Timeout,
    Status4xx,
    Status5xx,
    Other,
}

/// One voter of `--voters`: their cookie and what their vote may be now.
#[derive(Debug, Default)]
struct VoterState {
    cookie: Option<String>,
    possible: Possible,
}

/// One completed vote, as the collector sees it.
struct Sample {
    option: usize,
    outcome: Outcome,
    latency: Duration,
    finished: Instant,
    /// For a new voter (no `--voters`), what their vote may be; for `--voters` the voter's
    /// state is kept with the voter instead.
    new_voter: Option<Possible>,
}

pub async fn run(plan: LoadPlan) -> anyhow::Result<Report> {
    anyhow::ensure!(plan.concurrency > 0, "--concurrency must be at least 1");
    anyhow::ensure!(!plan.mix.is_empty(), "--mix needs at least one option");
    let url = plan.url.trim_end_matches('/').to_owned();
    let client = plan
        .connection
        .client()
        .pool_max_idle_per_host(plan.concurrency)
        .tcp_nodelay(true)
        .connect_timeout(plan.timeout.min(Duration::from_secs(3)))
        .timeout(plan.timeout)
        .build()?;
    let bodies: Arc<Vec<(String, &'static str)>> = Arc::new(
        plan.mix
            .iter()
            .map(|(id, _)| {
                if plan.form {
                    (format!("vote={id}"), "application/x-www-form-urlencoded")
                } else {
                    (serde_json::json!({ "vote": id }).to_string(), "application/json")
                }
            })
            .collect(),
    );
    let endpoint = if plan.form { format!("{url}/") } else { format!("{url}/api/vote") };
    let mut checker = match &plan.verify {
        Some(result_url) => Some(
            verify::Checker::start(result_url, &plan.mix, plan.voters.is_none(), &plan.connection).await?,
        ),
        None => None,
    };

    let votes = match (plan.votes, plan.duration) {
        (None, None) => Some(1000),
        (votes, _) => votes,
    };
    let voters: Option<Arc<Vec<Mutex<VoterState>>>> =
        plan.voters.map(|m| Arc::new((0..m).map(|_| Mutex::new(VoterState::default())).collect()));
    let weights: Vec<u32> = plan.mix.iter().map(|(_, w)| *w).collect();
    let total_weight: u32 = weights.iter().sum();
    anyhow::ensure!(total_weight > 0, "--mix weights add up to zero");

    let (samples_tx, mut samples_rx) = mpsc::unbounded_channel::<Sample>();
    let in_flight = Arc::new(Semaphore::new(plan.concurrency));
    let progress = Progress::new(plan.progress_bar, votes);
    let started = Instant::now();
    let deadline = plan.duration.map(|d| started + d);

    let collector = {
        let progress = progress.clone();
        let options = plan.mix.len();
        tokio::spawn(async move {
            let mut collected = Collected::new(options);
            while let Some(sample) = samples_rx.recv().await {
                collected.add(sample);
                progress.update(&collected);
            }
            collected
        })
    };

    let mut sent = 0u64;
    loop {
        if votes.is_some_and(|n| sent >= n) || deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let due = match plan.rate {
            Some(rate) => {
                let due = started + Duration::from_secs_f64(sent as f64 / rate);
                if deadline.is_some_and(|d| due >= d) {
                    break;
                }
                tokio::time::sleep_until(due.into()).await;
                due
            }
            None => Instant::now(),
        };
        let permit = in_flight.clone().acquire_owned().await?;
        let option = pick(&weights, total_weight);
        let voter = voters.as_ref().map(|all| (all.clone(), (sent % all.len() as u64) as usize));
        let (client, endpoint, bodies, samples) =
            (client.clone(), endpoint.clone(), bodies.clone(), samples_tx.clone());
        let open_loop = plan.rate.is_some();
        tokio::spawn(async move {
            let sample = match voter {
                Some((all, index)) => {
                    let mut state = all[index].lock().await;
                    let start = if open_loop { due } else { Instant::now() };
                    let (outcome, cookie) =
                        send(&client, &endpoint, &bodies[option], state.cookie.as_deref()).await;
                    if state.cookie.is_none() {
                        state.cookie = cookie;
                    }
                    state.possible.record(option, outcome);
                    Sample {
                        option,
                        outcome,
                        latency: start.elapsed(),
                        finished: Instant::now(),
                        new_voter: None,
                    }
                }
                None => {
                    let start = if open_loop { due } else { Instant::now() };
                    let (outcome, _) = send(&client, &endpoint, &bodies[option], None).await;
                    let mut possible = Possible::default();
                    possible.record(option, outcome);
                    Sample {
                        option,
                        outcome,
                        latency: start.elapsed(),
                        finished: Instant::now(),
                        new_voter: Some(possible),
                    }
                }
            };
            let _ = samples.send(sample);
            drop(permit);
        });
        sent += 1;
    }
    // Wait for every vote in flight, then for the collector to see them all.
    let _all = in_flight.acquire_many(plan.concurrency as u32).await?;
    let load_ended = Instant::now();
    drop(samples_tx);
    let collected = collector.await.context("collector task")?;
    progress.finish();

    let verification = match checker.as_mut() {
        Some(checker) => {
            let mut expectation = collected.expectation.clone();
            if let Some(voters) = &voters {
                for voter in voters.iter() {
                    expectation.add(&voter.lock().await.possible);
                }
            }
            Some(
                checker
                    .verify(expectation, &collected.acknowledged_at, load_ended, plan.verify_timeout)
                    .await?,
            )
        }
        None => None,
    };
    Ok(collected.report(sent, started, load_ended, verification))
}

/// Sends one vote; returns its outcome and, for a new voter, the cookie they were given.
async fn send(
    client: &reqwest::Client,
    endpoint: &str,
    (body, content_type): &(String, &'static str),
    cookie: Option<&str>,
) -> (Outcome, Option<String>) {
    let mut request = client.post(endpoint).header("content-type", *content_type).body(body.clone());
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    let response = match request.send().await {
        Ok(response) => response,
        Err(e) if e.is_connect() => return (Outcome::Refused(ErrorKind::Connect), None),
        Err(e) if e.is_timeout() => return (Outcome::Unknown(ErrorKind::Timeout), None),
        Err(_) => return (Outcome::Unknown(ErrorKind::Other), None),
    };
    let status = response.status();
    let cookie = response
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::to_owned);
    let outcome_unknown = response.headers().get("vote-outcome").is_some_and(|v| v == "unknown");
    // Read the body so the connection can be reused; the status already decided the outcome.
    let _ = response.bytes().await;
    let outcome = if status.is_success() {
        Outcome::Acknowledged
    } else if status.is_client_error() {
        Outcome::Refused(ErrorKind::Status4xx)
    } else if status == StatusCode::SERVICE_UNAVAILABLE && !outcome_unknown {
        Outcome::Refused(ErrorKind::Status5xx)
    } else {
        Outcome::Unknown(ErrorKind::Status5xx)
    };
    (outcome, cookie)
}

fn pick(weights: &[u32], total: u32) -> usize {
    let mut ticket = rand::random_range(0..total);
    for (index, weight) in weights.iter().enumerate() {
        if ticket < *weight {
            return index;
        }
        ticket -= weight;
    }
    weights.len() - 1
}

/// Everything the collector accumulates.
struct Collected {
    acknowledged: u64,
    refused: u64,
    unknown: u64,
    errors: ErrorCounts,
    latency_us: Histogram<u64>,
    /// When each acknowledged vote was answered, for the vote-to-screen delay.
    acknowledged_at: Vec<Instant>,
    expectation: Expectation,
    per_option: Vec<u64>,
}

impl Collected {
    fn new(options: usize) -> Self {
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

    fn add(&mut self, sample: Sample) {
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

    fn report(&self, sent: u64, started: Instant, ended: Instant, verify: Option<Verification>) -> Report {
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
struct Progress {
    bar: Option<ProgressBar>,
    started: Instant,
    last_line: Arc<std::sync::Mutex<Instant>>,
}

impl Progress {
    fn new(bar: bool, votes: Option<u64>) -> Self {
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

    fn update(&self, collected: &Collected) {
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

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Parses `a=2,b=1` into ids and weights.
pub fn parse_mix(spec: &str) -> anyhow::Result<Vec<(String, u32)>> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| {
            let (id, weight) = item.split_once('=').unwrap_or((item, "1"));
            Ok((id.trim().to_owned(), weight.trim().parse().with_context(|| format!("weight of `{id}`"))?))
        })
        .collect()
}

/// Parses `500ms`, `30s`, `2m` or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(text.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(text.len()));
    let value: f64 = number.parse().map_err(|_| format!("`{text}` is not a duration like 30s"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("`{unit}`: use ms, s, m or h")),
    };
    Ok(Duration::from_secs_f64(seconds))
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

    #[test]
    fn durations_and_mixes_parse() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_mix("a=2,b").unwrap(), vec![("a".to_owned(), 2), ("b".to_owned(), 1)]);
    }
}
