//! The two systems of a parallel run and where an event's system comes from.
//!
//! The system of an event is decided by the topic it was read from (configuration), never by
//! anything inside the payload: a connector cannot claim to be the other side.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One of the two systems being compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum System {
    /// The legacy system, back in front of users during the parallel run.
    Source,
    /// The new system, fenced and being repaired.
    Target,
}

impl System {
    /// Both systems, source first.
    pub const ALL: [System; 2] = [System::Source, System::Target];

    /// The configuration and wire name: `source` or `target`.
    pub const fn as_str(self) -> &'static str {
        match self {
            System::Source => "source",
            System::Target => "target",
        }
    }

    /// The other system.
    pub const fn other(self) -> System {
        match self {
            System::Source => System::Target,
            System::Target => System::Source,
        }
    }

    /// A stable one-byte code, used in store keys.
    pub const fn code(self) -> u8 {
        match self {
            System::Source => 1,
            System::Target => 2,
        }
    }

    /// The inverse of [`System::code`].
    pub const fn from_code(code: u8) -> Option<System> {
        match code {
            1 => Some(System::Source),
            2 => Some(System::Target),
            _ => None,
        }
    }
}

impl fmt::Display for System {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl FromStr for System {
    type Err = String;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        match input {
            "source" => Ok(System::Source),
            "target" => Ok(System::Target),
            other => Err(format!(
                "unknown system `{other}`: expected `source` or `target`"
            )),
        }
    }
}
