//! `voting load`: a load generator for the vote service, and a checker that what was
//! acknowledged is exactly what gets counted.
//!
//! Votes go out closed-loop (`--concurrency` at a time) or open-loop at `--rate` per second;
//! in open loop each latency is measured from when the vote was due, not when it was sent,
//! so a stalled server shows as latency instead of silently slowing the load (no coordinated
//! omission). With `--voters M`, M voters with their own cookies vote in turn and change
//! their minds; one voter never has two votes in flight, so "their last acknowledged vote"
//! is well defined. Every run is bounded by `--votes` and/or `--duration`.
//!
//! The pieces, each depending only on those before it:
//! - `outcome`: what became of one vote (acknowledged, refused, unknown).
//! - `percentiles`: latency summaries.
//! - `verify`: from the outcomes, the counts that must result, checked against the result
//!   service (`--verify`).
//! - `report`: what a run prints.
//! - `collect`: folds the outcomes of a run into its report.
//! - `generator`: sends the votes.
//! - `args`: the command line of `voting load`.

mod args;
mod collect;
mod connection;
mod generator;
mod outcome;
mod percentiles;
mod plan;
mod report;
mod verify;

pub use self::args::LoadArgs;
pub use self::connection::{Connection, parse_resolve};
pub use self::generator::run;
pub use self::percentiles::Percentiles;
pub use self::plan::{LoadPlan, parse_mix};
pub use self::report::{ErrorCounts, Outage, Report};
pub use self::verify::Verification;
