//! The command line of `voting load`.

use std::io::IsTerminal;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use voting_core::duration::parse_duration;

use crate::connection::{Connection, parse_resolve};
use crate::generator;
use crate::plan::{LoadPlan, parse_mix};

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Base URL of the vote service.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// How many votes to send (default 1000 when --duration is not given either).
    #[arg(long)]
    pub votes: Option<u64>,
    /// How long to send votes, e.g. `30s`, `2m`.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Most votes in flight at once.
    #[arg(long, default_value_t = 50)]
    pub concurrency: usize,
    /// Votes per second, open loop (latency measured from when each vote was due); without
    /// it, closed loop as fast as --concurrency allows.
    #[arg(long)]
    pub rate: Option<f64>,
    /// This many distinct voters, each with their own cookie, voting in turn and changing
    /// their minds; without it every vote is a new voter.
    #[arg(long)]
    pub voters: Option<u64>,
    /// Options and weights, e.g. `a=2,b=1`.
    #[arg(long, default_value = "a=1,b=1")]
    pub mix: String,
    /// Post the original app's form (`POST /`, `vote=a`) instead of the JSON API.
    #[arg(long)]
    pub form: bool,
    /// Per-vote timeout; a vote that times out is reported as unknown, not lost.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub timeout: Duration,
    /// Result service URL: wait until its counts match what was acknowledged, and exit
    /// non-zero if they do not.
    #[arg(long, value_name = "RESULT_URL")]
    pub verify: Option<String>,
    /// How long --verify waits for the counts to converge.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    pub verify_timeout: Duration,
    /// Also trust this CA certificate (PEM) for HTTPS, e.g. a test ACME server's root.
    #[arg(long = "ca-cert", value_name = "PEM_FILE")]
    pub ca_certs: Vec<PathBuf>,
    /// Send requests for HOST to ADDR instead of resolving it, like curl's --resolve
    /// (repeatable), e.g. `vote.voting.test:10.89.0.50`. With several addresses (one per edge
    /// node, `HOST:ADDR,ADDR` or HOST given again), a new connection tries them in order, 1 s
    /// each, as a browser does with several address records.
    #[arg(long, value_name = "HOST:ADDR[,ADDR]", value_parser = parse_resolve)]
    pub resolve: Vec<(String, Vec<IpAddr>)>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

impl LoadArgs {
    pub fn plan(&self) -> anyhow::Result<LoadPlan> {
        Ok(LoadPlan {
            url: self.url.clone(),
            votes: self.votes,
            duration: self.duration,
            concurrency: self.concurrency,
            rate: self.rate,
            voters: self.voters,
            mix: parse_mix(&self.mix)?,
            form: self.form,
            timeout: self.timeout,
            verify: self.verify.clone(),
            verify_timeout: self.verify_timeout,
            connection: Connection::new(&self.ca_certs, self.resolve.clone())?,
            progress_bar: !self.json && std::io::stderr().is_terminal(),
        })
    }

    /// Runs the load, prints the report (a table, or JSON with `--json`), and fails when
    /// `--verify` found votes lost or extra.
    pub async fn run(self) -> anyhow::Result<()> {
        let report = generator::run(self.plan()?).await?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{report}");
        }
        match &report.verify {
            Some(verification) if !verification.passed() => {
                anyhow::bail!("verification failed: {} lost, {} extra", verification.lost, verification.extra)
            }
            _ => Ok(()),
        }
    }
}
