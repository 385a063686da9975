//! The `salesforce-cdc` decoder on arbitrary bytes (see common/mod.rs for what is checked).
#![no_main]

#[path = "common/mod.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use tandem_formats::Format;

fuzz_target!(|data: &[u8]| common::check(Format::SalesforceCdc, None, data));
