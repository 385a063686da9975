//! The `debezium` decoder on arbitrary message keys and values (see common/mod.rs for what is
//! checked). The first input byte splits the rest into the key and the value.
#![no_main]

#[path = "common/mod.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use tandem_formats::Format;

fuzz_target!(|data: &[u8]| {
    let (key, value) = match data.split_first() {
        Some((&length, rest)) => rest.split_at(usize::from(length).min(rest.len())),
        None => (&[][..], data),
    };
    common::check(Format::Debezium, (!key.is_empty()).then_some(key), value);
});
