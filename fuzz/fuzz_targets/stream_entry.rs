//! `voting_core::queue::decode_vote`, which reads every entry the worker takes off the queue
//! (Redis stream fields or the embedded queue's), against `encode_vote`, which writes them.
//!
//! Invariants, for any list of fields (known names or not, repeated or missing, any values):
//! - it never panics;
//! - a vote it reads encodes to fields that decode to the same vote, and each of those
//!   fields is one the entry had (the number of milliseconds perhaps written differently,
//!   `+7` or `007` for `7`): the vote is what the entry said, nothing made up;
//! - an entry that is not a vote comes back whole, with a reason, for the dead-letter log.
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use voting_core::queue::{decode_vote, encode_vote};
use voting_core::{OptionId, Vote};

/// A field name: one `encode_vote` writes (picked by index), or any other.
#[derive(Arbitrary, Debug)]
enum Name {
    Known(u8),
    Other(String),
}

/// A field value: shaped like a voter id, an option id or milliseconds, so that whole votes
/// are common, or anything at all.
#[derive(Arbitrary, Debug)]
enum Text {
    VoterId([u8; 16]),
    /// Bytes mapped onto `[a-z0-9_-]`, of any length (an option id has 1 to 32).
    Ident(Vec<u8>),
    Millis(i64),
    Any(String),
}

/// `encode_vote`'s output as owned `(name, value)` pairs.
fn encode(vote: &Vote) -> Vec<(String, String)> {
    encode_vote(vote).into_iter().map(|(name, value)| (name.to_string(), value.to_string())).collect()
}

fuzz_target!(|entry: Vec<(Name, Text)>| {
    let sample = Vote {
        voter: "00000000000000000000000000000000".parse().unwrap(),
        option: OptionId::parse("a").unwrap(),
        cast_at_ms: 0,
    };
    let known: Vec<String> = encode(&sample).into_iter().map(|(name, _)| name).collect();
    let fields: Vec<(String, String)> = entry
        .into_iter()
        .map(|(name, text)| {
            let name = match name {
                Name::Known(i) => known[usize::from(i) % known.len()].clone(),
                Name::Other(name) => name,
            };
            let value = match text {
                Text::VoterId(bytes) => hex::encode(bytes),
                Text::Ident(bytes) => {
                    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789_-";
                    bytes.iter().map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()])).collect()
                }
                Text::Millis(ms) => ms.to_string(),
                Text::Any(s) => s,
            };
            (name, value)
        })
        .collect();

    match decode_vote(&fields) {
        Ok(vote) => {
            let encoded = encode(&vote);
            assert_eq!(decode_vote(&encoded), Ok(vote.clone()), "the encoded vote does not decode to itself");
            for (name, value) in &encoded {
                let said = |v: &String| {
                    v == value
                        || (value.parse::<i64>().is_ok() && v.parse::<i64>().ok() == value.parse().ok())
                };
                assert!(
                    fields.iter().any(|(n, v)| n == name && said(v)),
                    "{name}={value:?} is not in the entry {fields:?}"
                );
            }
        }
        Err(malformed) => {
            assert_eq!(malformed.fields, fields, "a malformed entry must come back whole");
            assert!(!malformed.reason.is_empty());
        }
    }
});
