//! Generated protobuf messages and tonic clients/servers for the agent-server
//! contract in `proto/palisade/v1/`.
//!
//! These types stay at the edge: the server and agent convert them into
//! `palisade-core` domain types (with `TryFrom` impls that live in those
//! crates). This crate must never hold domain logic, and must never print a
//! secret: types that carry one get a hand-written `Debug`.

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/palisade.v1.rs"));

    // === impl EnrollRequest ===

    impl std::fmt::Debug for EnrollRequest {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("EnrollRequest")
                .field("token", &"...")
                .field("csr_pem_len", &self.csr_pem.len())
                .field("facts", &self.facts)
                .finish()
        }
    }
}

pub use v1::*;

/// Protobuf package name, for logs and reflection.
pub const PACKAGE: &str = "palisade.v1";

/// URI SAN prefix that carries the device id in a client certificate:
/// `urn:palisade:device:<device-id>`.
pub const DEVICE_URI_SAN_PREFIX: &str = "urn:palisade:device:";

/// Inventory item kind for AI applications.
pub const INVENTORY_KIND_APP: &str = "app";
/// Inventory item kind for MCP servers.
pub const INVENTORY_KIND_MCP_SERVER: &str = "mcp_server";

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn enroll_request_debug_hides_token() {
        let req = EnrollRequest {
            token: "super-secret-token".into(),
            csr_pem: "-----BEGIN CERTIFICATE REQUEST-----".into(),
            facts: Some(DeviceFacts {
                hostname: "h".into(),
                ..Default::default()
            }),
        };
        let s = format!("{req:?}");
        assert!(!s.contains("super-secret-token"), "{s}");
        assert!(s.contains("hostname"), "{s}");
    }

    #[test]
    fn upload_response_round_trips() {
        let resp = UploadResponse {
            batch_id: 7,
            result: Some(upload_response::Result::Ack(Ack {
                event_ids: vec!["a".into()],
                rejected: vec![Rejected {
                    id: "b".into(),
                    reason: "bad json".into(),
                }],
            })),
        };
        let bytes = resp.encode_to_vec();
        assert_eq!(UploadResponse::decode(bytes.as_slice()).unwrap(), resp);
    }

    #[test]
    fn garbage_bytes_fail_to_decode() {
        // Field 1 declared as length-delimited with a length past the end.
        let garbage = [0x0a, 0xff, 0xff, 0xff, 0x0f, 0x01];
        assert!(EventBatch::decode(&garbage[..]).is_err());
    }
}
