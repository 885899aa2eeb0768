//! view: what ember shows of a profile rather than writes: the function
//! tables of `ember top` and of the agent's page ([`table`]), differential
//! flamegraphs and tables (`ember diff`, `ember query --diff-since`, the
//! page's comparison: [`diff`]) and the agent's HTML page ([`page`]).
//!
//! Everything here works on a finished [`Profile`](crate::profile::Profile),
//! after symbolization, so the commands and the agent share it without
//! importing one another.
#![warn(missing_docs)]

pub mod diff;
pub mod page;
pub mod table;
