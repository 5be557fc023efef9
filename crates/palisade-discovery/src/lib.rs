//! Discovery of AI apps and MCP servers on the device, and enforcement of
//! MCP decisions in client config files.
//!
//! The agent calls this library; it never talks to the network and never
//! reads the value of an env variable or header from any config.

pub mod clients;
pub mod fingerprint;
pub mod jsonc;
pub mod model;
pub mod read;
pub mod scan;

pub use model::{EntryKey, Finding, FindingKind, Inventory, InventoryChange, McpServer, Scope, Transport};
pub use scan::{scan, HomeSource, ScanConfig};
