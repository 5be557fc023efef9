//! Discovery of AI apps and MCP servers on the device, and enforcement of
//! MCP decisions in client config files.
//!
//! The agent calls this library; it never talks to the network and never
//! reads the value of an env variable or header from any config.

pub mod apps;
pub mod clients;
pub mod enforce;
pub mod events;
pub mod fingerprint;
pub mod jsonc;
pub mod model;
pub mod process;
pub mod read;
pub mod scan;
pub mod watch;

pub use model::{EntryKey, Finding, FindingKind, Inventory, InventoryChange, McpServer, Scope, Transport};
pub use scan::{scan, HomeSource, ScanConfig};
pub use apps::{detect_apps, unknown_app_from_traffic, AppEntry, AppKind, AppSighting, Catalog, DetectConfig};
pub use process::{ProcInfo, ProcessLister, SystemProcesses};
pub use watch::{watch, WatchConfig, WatchError, WatchHandle, WatchUpdate};
pub use enforce::{disable_server, restore, stop_processes, DisableReceipt, EnforceError, EnforcementAction, Enforcer, RestoreOutcome};
