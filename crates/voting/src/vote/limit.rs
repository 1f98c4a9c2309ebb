//! How fast one client may create new voters: a token bucket per client address (an IPv4
//! address or an IPv6 /64). A request without a voter cookie is a new voter, so without this
//! one client can add thousands of counted votes a second. Re-votes by an existing voter are
//! not counted here: only the voter's latest vote counts, so they cannot stuff the ballot
//! (request floods are the edge's per-address rate limit's business).
//!
//! Memory is bounded under an address-spraying attack (an IPv6 client holds 2^64 addresses,
//! and often 2^16 /64s): at most [`MAX_TRACKED`] clients are tracked. A client whose bucket
//! has refilled is the same as one never seen, so such entries are dropped when room is
//! needed. If the table is full of clients still limited, new clients are refused until
//! entries refill: new voters wait out the attack rather than the attacker resetting its
//! own buckets by spraying.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::http::client::{Cidrs, ClientKey};

/// Most clients tracked at once: ~3 MB.
pub const MAX_TRACKED: usize = 65_536;

/// How often a full table may be swept for refilled entries: a sweep looks at every entry.
const SWEEP_INTERVAL: Duration = Duration::from_millis(100);

/// The settings (`NEW_VOTER_RATE`, `NEW_VOTER_BURST`, `RATE_LIMIT_EXEMPT`).
#[derive(Debug, Clone)]
pub struct NewVoterPolicy {
    /// New voters per second per client address, sustained; 0 turns the limit off.
    pub rate: f64,
    /// New voters a client may create at once.
    pub burst: u32,
    /// Clients never limited.
    pub exempt: Cidrs,
}

impl Default for NewVoterPolicy {
    fn default() -> Self {
        Self { rate: 5.0, burst: 20, exempt: Cidrs::loopback() }
    }
}

#[derive(Debug)]
pub struct NewVoterLimit {
    policy: NewVoterPolicy,
    started: Instant,
    state: Mutex<Buckets>,
}

#[derive(Debug, Default)]
struct Buckets {
    by_client: HashMap<ClientKey, Bucket>,
    last_sweep: Option<Instant>,
}

/// Tokens left and when they were counted, in milliseconds since the limit was made: eight
/// bytes, not the 24 of a float and an `Instant`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f32,
    at_ms: u32,
}

impl NewVoterLimit {
    pub fn new(policy: NewVoterPolicy) -> Self {
        Self { policy, started: Instant::now(), state: Mutex::default() }
    }

    fn off(&self) -> bool {
        self.policy.rate <= 0.0 || self.policy.burst == 0
    }

    /// Takes one new voter from `client`'s allowance, or says how long until one is left.
    pub fn admit(&self, client: IpAddr) -> Result<(), Duration> {
        if self.off() || self.policy.exempt.contains(client) {
            return Ok(());
        }
        let now = Instant::now();
        let now_ms = u32::try_from(now.duration_since(self.started).as_millis()).unwrap_or(u32::MAX);
        let key = ClientKey::from(client);
        let mut state = self.state.lock().expect("never poisoned");
        if let Some(bucket) = state.by_client.get_mut(&key) {
            let tokens = self.refilled(*bucket, now_ms);
            return if tokens >= 1.0 {
                *bucket = Bucket { tokens: tokens - 1.0, at_ms: now_ms };
                Ok(())
            } else {
                *bucket = Bucket { tokens, at_ms: now_ms };
                Err(self.wait_for_one(tokens))
            };
        }
        if state.by_client.len() >= MAX_TRACKED {
            let may_sweep = state.last_sweep.is_none_or(|at| now.duration_since(at) >= SWEEP_INTERVAL);
            if may_sweep {
                state.last_sweep = Some(now);
                let full = self.policy.burst as f32;
                state.by_client.retain(|_, bucket| self.refilled(*bucket, now_ms) < full);
            }
            if state.by_client.len() >= MAX_TRACKED {
                return Err(Duration::from_secs(1));
            }
        }
        state.by_client.insert(key, Bucket { tokens: self.policy.burst as f32 - 1.0, at_ms: now_ms });
        Ok(())
    }

    /// Clients tracked now.
    pub fn tracked(&self) -> usize {
        self.state.lock().expect("never poisoned").by_client.len()
    }

    fn refilled(&self, bucket: Bucket, now_ms: u32) -> f32 {
        let elapsed = now_ms.saturating_sub(bucket.at_ms) as f64 / 1000.0;
        (f64::from(bucket.tokens) + elapsed * self.policy.rate).min(f64::from(self.policy.burst)) as f32
    }

    fn wait_for_one(&self, tokens: f32) -> Duration {
        Duration::from_secs_f64((1.0 - f64::from(tokens)).max(0.0) / self.policy.rate)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use super::*;

    fn limit(rate: f64, burst: u32) -> NewVoterLimit {
        NewVoterLimit::new(NewVoterPolicy { rate, burst, exempt: "127.0.0.0/8".parse().unwrap() })
    }

    #[test]
    fn a_client_gets_its_burst_then_waits_and_others_are_not_affected() {
        let limit = limit(5.0, 20);
        let client: IpAddr = "198.51.100.7".parse().unwrap();
        for _ in 0..20 {
            assert_eq!(limit.admit(client), Ok(()));
        }
        let wait = limit.admit(client).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(200), "{wait:?}");
        assert_eq!(limit.admit("198.51.100.8".parse().unwrap()), Ok(()));
        assert_eq!(limit.admit("127.0.0.1".parse().unwrap()), Ok(()), "exempt");
    }

    #[test]
    fn an_ipv6_client_is_one_client_across_its_64() {
        let limit = limit(5.0, 3);
        for host in 1..=3u16 {
            assert_eq!(limit.admit(format!("2001:db8::{host}").parse().unwrap()), Ok(()));
        }
        assert!(limit.admit("2001:db8::ffff:1".parse().unwrap()).is_err());
        assert_eq!(limit.admit("2001:db8:0:1::1".parse().unwrap()), Ok(()));
    }

    #[test]
    fn rate_zero_turns_the_limit_off() {
        let limit = limit(0.0, 20);
        let client: IpAddr = "198.51.100.7".parse().unwrap();
        assert!((0..1000).all(|_| limit.admit(client).is_ok()));
        assert_eq!(limit.tracked(), 0);
    }

    #[test]
    fn spraying_addresses_never_grows_the_table_past_its_bound() {
        let limit = limit(5.0, 20);
        let mut refused = 0;
        for n in 0..(MAX_TRACKED as u128 * 2) {
            let sprayed =
                IpAddr::V6(Ipv6Addr::from_bits(0x2001_0db8_0000_0000_0000_0000_0000_0000 | (n << 64)));
            if limit.admit(sprayed).is_err() {
                refused += 1;
            }
        }
        assert_eq!(limit.tracked(), MAX_TRACKED);
        assert_eq!(refused, MAX_TRACKED, "new clients beyond the bound wait while the table is full");
    }
}
