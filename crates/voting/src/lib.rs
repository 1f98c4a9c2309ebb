//! The voting platform: one library, one thin binary.
//!
//! - [`vote`]: the vote service (page, form, JSON API) in front of the queue.
//! - [`worker`]: moves votes from the queue into the store.
//! - [`result`]: live results from the store, pushed to browsers.
//! - [`service`]: the one shape of all three: `build(config, dependencies)` binds,
//!   `local_addr()`, `run(shutdown)` serves until cancelled and everything started has ended.
//! - [`system`]: the three composed over one queue and store; [`up`] runs it on embedded
//!   storage, the system tests on Redis and PostgreSQL.
//! - [`cli`]: the command line and environment, one definition for both; each subcommand's
//!   arguments and wiring live in its module (`vote::args`, `worker::args`, ...).
//! - [`certs`]: the certificate manager, HTTPS certificates ordered once for every edge proxy.
//! - [`http`], [`assets`]: what the HTTP services share.
//!
//! The vocabulary (votes, voters, the queue, the store) lives in `voting-core`; `voting load`,
//! the load generator and vote-count checker, in `voting-load`.

pub mod assets;
pub mod certs;
pub mod cli;
pub mod http;
pub mod result;
pub mod service;
pub mod system;
pub mod up;
pub mod vote;
pub mod worker;
