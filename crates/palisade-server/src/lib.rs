//! palisade-server: the control plane library. `main.rs` only loads config
//! and calls [`run`]; tests call [`run`] with listeners bound to 127.0.0.1:0.

pub mod config;
pub mod store;

pub use config::{ConfigError, ServerConfig};
