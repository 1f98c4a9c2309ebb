//! Latency summaries, for the votes' answers and for vote-to-screen delays.

use std::fmt;

use hdrhistogram::Histogram;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
}

impl Percentiles {
    /// From a histogram of values in some unit, divided by `per_unit` (1000 for µs → ms).
    pub fn of(histogram: &Histogram<u64>, per_unit: f64) -> Self {
        let at = |q: f64| histogram.value_at_quantile(q) as f64 / per_unit;
        Self {
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            p99_9: at(0.999),
            max: histogram.max() as f64 / per_unit,
        }
    }
}

impl fmt::Display for Percentiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
            self.p50, self.p90, self.p99, self.p99_9, self.max
        )
    }
}
