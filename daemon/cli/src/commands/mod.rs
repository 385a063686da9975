//! The operator's commands that talk to a running daemon, by concern.

pub(crate) mod backup;
pub(crate) mod cutover;
pub(crate) mod ownership;
pub(crate) mod parity;
