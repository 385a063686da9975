//! The `debezium` decoder on arbitrary message keys and values: it never panics, and every
//! event it returns passes the canonical decoder unchanged. The first input byte splits the
//! rest into the message key and the message value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_core::format::{decode_message, Format, FormatSettings};

fuzz_target!(|data: &[u8]| {
    let (key, value) = match data.split_first() {
        Some((&length, rest)) => rest.split_at(usize::from(length).min(rest.len())),
        None => (&[][..], data),
    };
    let key = (!key.is_empty()).then_some(key);
    let settings = FormatSettings::new(Format::Debezium);
    let Ok(events) = decode_message(&settings, key, Some(value), 1 << 16) else {
        return;
    };
    for event in events {
        let encoded = serde_json::to_vec(&event).expect("a decoded event encodes");
        let again = tandem_core::event::decode(Some(&encoded), usize::MAX)
            .expect("a decoded event is a valid canonical event");
        assert_eq!(again, event);
    }
});
