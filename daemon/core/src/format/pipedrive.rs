//! Placeholder until the decoder lands.

use serde_json::Value;

use super::FormatSettings;
use crate::event::ChangeEvent;

pub(super) fn decode(_settings: &FormatSettings, _value: &Value) -> Result<Vec<ChangeEvent>, String> {
    Err("this format is not decoded yet".to_owned())
}
