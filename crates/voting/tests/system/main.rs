//! The system against real Redis and PostgreSQL servers, started per test from system
//! binaries. Outages are real: servers and workers are killed, not mocked.

mod all_in_one;
mod bad_input;
mod helpers;
mod load;
mod outages;
mod roles;
mod votes;
mod worker;
