//! What every vendor decoder's fuzz target checks: decoding never panics, and every event it
//! returns passes the canonical decoder unchanged.

use tandem_formats::{decode_message, Format, FormatSettings};

pub fn check(format: Format, key: Option<&[u8]>, value: &[u8]) {
    check_with(&FormatSettings::new(format), key, value);
}

/// The same, with the topic's settings (Salesforce event schemas, for one).
pub fn check_with(settings: &FormatSettings, key: Option<&[u8]>, value: &[u8]) {
    let Ok(events) = decode_message(settings, key, Some(value), 1 << 16) else {
        return;
    };
    for event in events {
        let encoded = serde_json::to_vec(&event).expect("a decoded event encodes");
        let again = tandem_core::event::decode(Some(&encoded), usize::MAX)
            .expect("a decoded event is a valid canonical event");
        assert_eq!(again, event);
    }
}
