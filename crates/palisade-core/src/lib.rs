//! Domain types shared across the wire: audit records and the policy model.
//!
//! This crate is pure data and pure functions. It must never do I/O, never
//! depend on generated proto types, and never know SQL.

pub mod host;
pub mod policy;
pub mod record;

pub use host::HostPattern;
pub use policy::{
    AiHost, CaptureMode, CaptureOverride, CaptureScope, CaptureSubject, Decision, GuardAction,
    PendingMode, Policy, PolicyError,
};
pub use record::{
    AppRef, AuditEvent, DeviceRef, EventKind, Finding, FindingLocation, Interaction, PolicyRef, RecordDecision,
    RequestCapture, ResponseCapture, Timing, Usage, UserRef,
};
