//! The `tandem` command: configuration, wiring of the daemon, and the operator's subcommands.

pub mod client;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod logging;
pub mod render;
pub mod simkafka;
