//! The canonical decoder on arbitrary bytes: it never panics, and whatever it accepts
//! re-encodes to an event it accepts again, unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(event) = tandem_core::event::decode(Some(data), 1 << 16) else {
        return;
    };
    let encoded = serde_json::to_vec(&event).expect("a decoded event encodes");
    let again = tandem_core::event::decode(Some(&encoded), usize::MAX)
        .expect("a decoded event, encoded again, decodes");
    assert_eq!(again, event);
});
