//! The agent page (in progress).
