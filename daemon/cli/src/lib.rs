//! The `tandem` command: configuration, wiring of the daemon, and the operator's subcommands.

pub mod client;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod logging;
pub mod render;
pub mod simkafka;

/// The release and the commit it was built from, as `tandem --version` prints them.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("TANDEM_COMMIT"),
    ")"
);
