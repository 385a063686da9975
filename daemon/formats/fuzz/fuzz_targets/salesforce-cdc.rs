//! The `salesforce-cdc` decoder on arbitrary bytes (see common/mod.rs for what is checked),
//! with the example event schema loaded, so that field bitmaps naming its schema id are
//! decoded with it and others are read without one.
#![no_main]

#[path = "common/mod.rs"]
mod common;

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use tandem_formats::{EventSchemas, Format, FormatSettings};

/// `GetSchema`'s answer for the example `AccountChangeEvent`, as the examples' events name it.
const SCHEMA: &str = include_str!(
    "../../../../schemas/examples/formats/salesforce-cdc/schemas/account-schema-get-schema.json"
);

fn settings() -> &'static FormatSettings {
    static SETTINGS: OnceLock<FormatSettings> = OnceLock::new();
    SETTINGS.get_or_init(|| {
        let response: serde_json::Value = serde_json::from_str(SCHEMA).expect("the example is JSON");
        let id = response["schemaId"].as_str().expect("the example names its id");
        let schema = response["schemaJson"].as_str().expect("the example holds the schema");
        FormatSettings {
            event_schemas: Arc::new(EventSchemas::from_text(id, schema).expect("the example schema parses")),
            ..FormatSettings::new(Format::SalesforceCdc)
        }
    })
}

fuzz_target!(|data: &[u8]| common::check_with(settings(), None, data));
