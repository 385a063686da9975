//! Value encoding: MessagePack through serde, behind one pair of functions.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};

pub(crate) fn encode_value<T: Serialize>(value: &T) -> Vec<u8> {
    rmp_serde::to_vec_named(value)
        .expect("invariant: store values are plain data that MessagePack can always encode")
}

pub(crate) fn decode_value<T: DeserializeOwned>(
    bytes: &[u8],
    column_family: &'static str,
) -> Result<T> {
    rmp_serde::from_slice(bytes).map_err(|error| Error::CorruptValue {
        column_family,
        detail: error.to_string(),
    })
}
