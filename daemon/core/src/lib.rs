//! tandem's core: the decisions of a parallel run as pure functions and value types.
//!
//! Events, identity (join keys), mapping, comparison, record status and aggregates live here.
//! Nothing in this crate performs I/O: the planner in [`apply`] takes a view of the current
//! state and a batch of events and returns a plan, which the store executes atomically.
//! The vendors' formats, which decode into the canonical event, are the `tandem-formats`
//! crate's.

pub mod apply;
pub mod cell;
pub mod compare;
pub mod cutover;
pub mod delta;
pub mod event;
pub mod feed;
pub mod gates;
pub mod mapping;
pub mod ownership;
pub mod patterns;
pub mod record;
pub mod side;
pub mod summary;
pub mod system;
pub mod time;
pub mod timeline;

pub use apply::{Input, Outcome, Plan, Planner, StateView};
pub use event::{ChangeEvent, DeadLetterReason, DecodeError, Fields, Op};
pub use mapping::{EntityMapping, JoinKeySource, Mapping};
pub use record::{RecordRow, RecordStatus, Reference, SideRecord, Status};
pub use summary::{ApplyState, EntitySummary, IngestCounters};
pub use system::System;
pub use time::Timestamp;
