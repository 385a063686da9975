//! The `hubspot-webhooks` decoder on arbitrary bytes: it never panics, and every event it returns
//! passes the canonical decoder unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_core::format::{decode_message, Format, FormatSettings};

fuzz_target!(|data: &[u8]| {
    let settings = FormatSettings::new(Format::HubspotWebhooks);
    let Ok(events) = decode_message(&settings, None, Some(data), 1 << 16) else {
        return;
    };
    for event in events {
        let encoded = serde_json::to_vec(&event).expect("a decoded event encodes");
        let again = tandem_core::event::decode(Some(&encoded), usize::MAX)
            .expect("a decoded event is a valid canonical event");
        assert_eq!(again, event);
    }
});
