//! What a load run is asked to do.

use std::time::Duration;

use anyhow::Context;

use crate::connection::Connection;

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

impl LoadPlan {
    /// How many votes to send: `--votes`, else unbounded with `--duration`, else 1000.
    pub(crate) fn vote_count(&self) -> Option<u64> {
        match (self.votes, self.duration) {
            (None, None) => Some(1000),
            (votes, _) => votes,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mix_without_a_weight_weighs_one() {
        assert_eq!(parse_mix("a=2,b").unwrap(), vec![("a".to_owned(), 2), ("b".to_owned(), 1)]);
        assert!(parse_mix("a=many").is_err());
    }
}
