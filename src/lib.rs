//! ember: a continuous CPU profiler for Linux.
//!
//! The data flows through the modules in order: [`sample`] (the BPF sampler)
//! → [`aggregate`] (drain kernel maps into counts) → [`symbolize`] (addresses
//! to functions, per binary) → [`profile`] (one symbolized profile) →
//! [`export`] (pprof, folded stacks, SVG). [`unwind`] builds the tables the
//! sampler walks user stacks with. [`capture`] is the one profiling session
//! that `ember record` ([`record`]), `ember top` ([`top`]) and `ember agent`
//! ([`agent`]) drive with their own policies ([`watch`]: what record and top
//! watch and when they stop); [`query`], [`diff`] and [`tables`] are the
//! other commands. [`view`] holds what is shown rather than written:
//! function tables, differences of profiles and the agent's page.
//! Every file another process controls is opened through [`untrusted`].

#![warn(missing_docs)]

pub mod agent;
pub mod aggregate;
pub mod capture;
pub mod diff;
pub mod export;
pub mod net;
pub mod preflight;
pub mod process;
pub mod profile;
pub mod python;
pub mod query;
pub mod record;
pub mod sample;
pub mod signal;
pub mod symbolize;
pub mod tables;
pub mod top;
pub mod untrusted;
pub mod unwind;
pub mod util;
pub mod view;
pub mod watch;
