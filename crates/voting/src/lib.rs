//! The voting platform: one library, one thin binary.
//!
//! - [`vote`]: the vote service (page, form, JSON API) in front of the queue.
//! - [`worker`]: moves votes from the queue into the store.
//! - [`result`]: live results from the store, pushed to browsers.
//! - [`up`]: all three in one process on embedded storage.
//! - [`load`]: `voting load`, the load generator and vote-count checker.
//! - [`cli`]: the command line and environment, one definition for both.
//! - [`http`], [`assets`]: what the HTTP services share.
//!
//! The vocabulary (votes, voters, the queue, the store) lives in `voting-core`.

pub mod assets;
pub mod cli;
pub mod http;
pub mod load;
pub mod result;
pub mod up;
pub mod vote;
pub mod worker;
