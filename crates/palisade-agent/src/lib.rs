//! The Palisade device agent as a library: the intercepting proxy, device
//! identity, attribution, the recorder in front of the spool, and the sync
//! client to the control plane. `main.rs` is a thin shell around [`Agent`].

pub mod agent;
pub mod attribution;
pub mod config;
pub mod inventory;
pub mod proxy;
pub mod recorder;
pub mod sync;
pub mod telemetry;

pub use agent::{Agent, AgentError};
