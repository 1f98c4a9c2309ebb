//! Sends the votes of a run: closed loop (`--concurrency` at a time) or open loop (`--rate`),
//! as new voters or as `--voters` returning voters, then has the counts checked.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use reqwest::StatusCode;
use tokio::sync::{Mutex, Semaphore, mpsc};
use tokio_util::task::TaskTracker;

use crate::collect::{Collected, Progress, Sample};
use crate::outcome::{ErrorKind, Outcome};
use crate::plan::LoadPlan;
use crate::report::Report;
use crate::verify::{Checker, Expectation, Possible};

/// Runs the plan: sends every vote, then, with `--verify`, waits for the counts.
pub async fn run(plan: LoadPlan) -> anyhow::Result<Report> {
    let target = Target::new(&plan)?;
    let mut checker = match &plan.verify {
        Some(result_url) => {
            Some(Checker::start(result_url, &plan.mix, plan.voters.is_none(), &plan.connection).await?)
        }
        None => None,
    };
    let voters = plan.voters.map(Voters::new);
    let sent = send_votes(&plan, Arc::new(target), voters.clone()).await?;
    let verification = match checker.as_mut() {
        Some(checker) => {
            let expectation = expectation(&sent.collected, voters.as_ref()).await;
            let acknowledged_at = &sent.collected.acknowledged_at;
            Some(checker.verify(expectation, acknowledged_at, sent.ended, plan.verify_timeout).await?)
        }
        None => None,
    };
    Ok(sent.collected.report(sent.count, sent.started, sent.ended, verification))
}

/// Where and what votes are sent: the endpoint, a ready body per option, and their weights.
struct Target {
    client: reqwest::Client,
    endpoint: String,
    /// Per option of the mix: the body and its content type.
    bodies: Vec<(String, &'static str)>,
    weights: Vec<u32>,
    total_weight: u32,
}

impl Target {
    fn new(plan: &LoadPlan) -> anyhow::Result<Self> {
        anyhow::ensure!(plan.concurrency > 0, "--concurrency must be at least 1");
        anyhow::ensure!(!plan.mix.is_empty(), "--mix needs at least one option");
        let weights: Vec<u32> = plan.mix.iter().map(|(_, w)| *w).collect();
        let total_weight: u32 = weights.iter().sum();
        anyhow::ensure!(total_weight > 0, "--mix weights add up to zero");
        let client = plan
            .connection
            .client()
            .pool_max_idle_per_host(plan.concurrency)
            .tcp_nodelay(true)
            .connect_timeout(plan.connection.connect_timeout(plan.timeout))
            .timeout(plan.timeout)
            .build()?;
        let url = plan.url.trim_end_matches('/');
        let endpoint = if plan.form { format!("{url}/") } else { format!("{url}/api/vote") };
        let bodies = plan
            .mix
            .iter()
            .map(|(id, _)| {
                if plan.form {
                    (format!("vote={id}"), "application/x-www-form-urlencoded")
                } else {
                    (serde_json::json!({ "vote": id }).to_string(), "application/json")
                }
            })
            .collect();
        Ok(Self { client, endpoint, bodies, weights, total_weight })
    }

    /// An option of the mix, drawn by weight.
    fn pick(&self) -> usize {
        let mut ticket = rand::random_range(0..self.total_weight);
        for (index, weight) in self.weights.iter().enumerate() {
            if ticket < *weight {
                return index;
            }
            ticket -= weight;
        }
        self.weights.len() - 1
    }

    /// Sends one vote; returns its outcome and, for a new voter, the cookie they were given.
    async fn send(&self, option: usize, cookie: Option<&str>) -> (Outcome, Option<String>) {
        let (body, content_type) = &self.bodies[option];
        let mut request =
            self.client.post(&self.endpoint).header("content-type", *content_type).body(body.clone());
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

    /// One vote for `option`, as `voter` (a returning voter of `--voters`) or as a new voter;
    /// its latency counts from `start`.
    async fn cast(&self, option: usize, voter: Option<(Voters, usize)>, start: Instant) -> Sample {
        match voter {
            Some((voters, index)) => {
                // A voter never has two votes in flight: their last acknowledged vote is defined.
                let mut voter = voters.0[index].lock().await;
                let (outcome, cookie) = self.send(option, voter.cookie.as_deref()).await;
                if voter.cookie.is_none() {
                    voter.cookie = cookie;
                }
                voter.possible.record(option, outcome);
                Sample {
                    option,
                    outcome,
                    latency: start.elapsed(),
                    finished: Instant::now(),
                    new_voter: None,
                }
            }
            None => {
                let (outcome, _) = self.send(option, None).await;
                let mut possible = Possible::default();
                possible.record(option, outcome);
                let latency = start.elapsed();
                Sample { option, outcome, latency, finished: Instant::now(), new_voter: Some(possible) }
            }
        }
    }
}

/// The returning voters of `--voters`, each with their cookie and what their vote may be now.
#[derive(Clone)]
struct Voters(Arc<Vec<Mutex<VoterState>>>);

#[derive(Debug, Default)]
struct VoterState {
    cookie: Option<String>,
    possible: Possible,
}

impl Voters {
    fn new(count: u64) -> Self {
        Self(Arc::new((0..count).map(|_| Mutex::new(VoterState::default())).collect()))
    }

    /// Who casts the `n`-th vote: the voters take turns.
    fn turn(&self, n: u64) -> (Self, usize) {
        (self.clone(), (n % self.0.len() as u64) as usize)
    }
}

/// What the counts must show: the new voters' votes and each returning voter's last one.
async fn expectation(collected: &Collected, voters: Option<&Voters>) -> Expectation {
    let mut expectation = collected.expectation.clone();
    for voter in voters.map(|v| v.0.iter()).into_iter().flatten() {
        expectation.add(&voter.lock().await.possible);
    }
    expectation
}

/// The votes of a run, once every one of them has its outcome.
struct Sent {
    count: u64,
    collected: Collected,
    started: Instant,
    ended: Instant,
}

/// Sends votes until `--votes` or `--duration` is reached, each vote a task of its own and at
/// most `--concurrency` in flight, and collects their outcomes.
async fn send_votes(plan: &LoadPlan, target: Arc<Target>, voters: Option<Voters>) -> anyhow::Result<Sent> {
    let limit = plan.vote_count();
    let (samples, mut samples_rx) = mpsc::unbounded_channel::<Sample>();
    let in_flight = Arc::new(Semaphore::new(plan.concurrency));
    let progress = Progress::new(plan.progress_bar, limit);
    let started = Instant::now();
    let deadline = plan.duration.map(|d| started + d);

    let collector = {
        let progress = progress.clone();
        let mut collected = Collected::new(plan.mix.len());
        tokio::spawn(async move {
            while let Some(sample) = samples_rx.recv().await {
                collected.add(sample);
                progress.update(&collected);
            }
            collected
        })
    };

    let votes = TaskTracker::new();
    let mut count = 0u64;
    while limit.is_none_or(|n| count < n) && deadline.is_none_or(|d| Instant::now() < d) {
        let due = match plan.rate {
            Some(rate) => {
                let due = started + Duration::from_secs_f64(count as f64 / rate);
                if deadline.is_some_and(|d| due >= d) {
                    break;
                }
                tokio::time::sleep_until(due.into()).await;
                Some(due)
            }
            None => None,
        };
        let permit = in_flight.clone().acquire_owned().await?;
        let option = target.pick();
        let voter = voters.as_ref().map(|v| v.turn(count));
        let (target, samples) = (target.clone(), samples.clone());
        votes.spawn(async move {
            // Open loop: from when the vote was due, so a stalled server shows as latency.
            let start = due.unwrap_or_else(Instant::now);
            let _ = samples.send(target.cast(option, voter, start).await);
            drop(permit);
        });
        count += 1;
    }
    // Wait for every vote in flight, then for the collector to see them all.
    votes.close();
    votes.wait().await;
    let ended = Instant::now();
    drop(samples);
    let collected = collector.await.context("collector task")?;
    progress.finish();
    Ok(Sent { count, collected, started, ended })
}
