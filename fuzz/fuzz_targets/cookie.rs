//! `voting::vote::cookie::CookieKey::verify`, which reads the `voter_id` cookie of every vote.
//!
//! Invariants:
//! - it never panics on any cookie value;
//! - under a fixed key, a value verifies only if it is exactly what `sign` gives for that
//!   voter (the tag's hex digits in either case): the fuzzer cannot forge a cookie;
//! - a cookie signed for any voter id verifies as that voter; under another key it is forged;
//!   changed in any one byte it does not verify (unless the change only flips the case of a
//!   hex digit).
#![no_main]

use libfuzzer_sys::fuzz_target;
use voting::vote::cookie::{BadCookie, CookieKey};
use voting_core::VoterId;

const KEY: &[u8] = b"fuzz: a fixed cookie key, 32 B!!";
const OTHER_KEY: &[u8] = b"fuzz: another cookie key, 32 B!!";

fuzz_target!(|data: &[u8]| {
    let key = CookieKey::new(KEY);

    // The whole input as a cookie value.
    if let Ok(value) = std::str::from_utf8(data)
        && let Ok(voter) = key.verify(value)
    {
        let signed = key.sign(&voter);
        assert!(signed.eq_ignore_ascii_case(value), "{value:?} verified but was not signed ({signed:?})");
    }

    // A cookie we signed for the voter id of the first 16 bytes; the next two bytes pick one
    // byte of it to change, and what to.
    let Some((id, rest)) = data.split_first_chunk::<16>() else {
        return;
    };
    let voter: VoterId = hex::encode(id).parse().expect("32 lowercase hex digits are a voter id");
    let cookie = key.sign(&voter);
    assert_eq!(key.verify(&cookie), Ok(voter));
    assert_eq!(CookieKey::new(OTHER_KEY).verify(&cookie), Err(BadCookie::Forged));
    if let &[at, to, ..] = rest {
        let mut changed = cookie.clone().into_bytes();
        let at = usize::from(at) % changed.len();
        changed[at] = to;
        if let Ok(changed) = String::from_utf8(changed)
            && !changed.eq_ignore_ascii_case(&cookie)
        {
            assert!(key.verify(&changed).is_err(), "{changed:?}, a changed {cookie:?}, verified");
        }
    }
});
