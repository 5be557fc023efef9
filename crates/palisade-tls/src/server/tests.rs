//! Handshake tests for the MITM server configs over in-memory pipes.
//! Offline only; they must never touch the network or the real keyring.

use super::*;
use crate::test_util::{client_trusting, handshake, temp_ca};
use rustls::HandshakeKind;

#[tokio::test]
async fn client_trusting_only_the_device_ca_completes_handshakes() {
    let (_tmp, ca) = temp_ca();
    let leaves = Arc::new(LeafCache::new(ca.clone(), 16));
    let server = mitm_server_config(leaves.clone());
    let client = client_trusting(&[ca.cert_der()], &[b"h2", b"http/1.1"]);
    let out = handshake(server.clone(), client.clone(), "api.openai.com")
        .await
        .unwrap();
    assert_eq!(out.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(out.server_sni.as_deref(), Some("api.openai.com"));
    assert_eq!(leaves.minted(), 1);

    let h1_client = client_trusting(&[ca.cert_der()], &[b"http/1.1"]);
    let out = handshake(server, h1_client, "api.anthropic.com")
        .await
        .unwrap();
    assert_eq!(out.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(leaves.minted(), 2);
}

#[tokio::test]
async fn ip_literal_has_no_sni_and_needs_the_single_cert_config() {
    let (_tmp, ca) = temp_ca();
    let leaves = Arc::new(LeafCache::new(ca.clone(), 16));
    let client = client_trusting(&[ca.cert_der()], &[b"h2", b"http/1.1"]);
    // Clients send no SNI for IP literals: the resolver has nothing to go on.
    let err = handshake(
        mitm_server_config(leaves.clone()),
        client.clone(),
        "127.0.0.1",
    )
    .await
    .unwrap_err();
    assert!(!err.is_empty());
    // The proxy knows the host from CONNECT and uses a one-off config.
    let key = leaves.get("127.0.0.1").unwrap();
    let out = handshake(single_cert_server_config(key), client, "127.0.0.1")
        .await
        .unwrap();
    assert_eq!(out.server_sni, None);
    assert_eq!(out.alpn.as_deref(), Some(&b"h2"[..]));
}

#[tokio::test]
async fn leaf_for_one_host_is_rejected_for_another() {
    let (_tmp, ca) = temp_ca();
    let leaves = Arc::new(LeafCache::new(ca.clone(), 16));
    let key = leaves.get("api.openai.com").unwrap();
    let client = client_trusting(&[ca.cert_der()], &[]);
    let err = handshake(single_cert_server_config(key), client, "api.anthropic.com")
        .await
        .unwrap_err();
    assert!(
        err.contains("NotValidForName") || err.contains("not valid for"),
        "{err}"
    );
}

#[tokio::test]
async fn client_not_trusting_the_device_ca_fails() {
    let (_tmp, ca) = temp_ca();
    let (_tmp2, other_ca) = temp_ca();
    let leaves = Arc::new(LeafCache::new(ca, 16));
    let client = client_trusting(&[other_ca.cert_der()], &[]);
    let err = handshake(mitm_server_config(leaves), client, "api.openai.com")
        .await
        .unwrap_err();
    assert!(
        err.contains("UnknownIssuer") || err.contains("BadSignature"),
        "{err}"
    );
}

#[tokio::test]
async fn second_connection_is_resumed() {
    let (_tmp, ca) = temp_ca();
    let leaves = Arc::new(LeafCache::new(ca.clone(), 16));
    let server = mitm_server_config(leaves);
    let client = client_trusting(&[ca.cert_der()], &[b"h2", b"http/1.1"]);
    let first = handshake(server.clone(), client.clone(), "api.openai.com")
        .await
        .unwrap();
    assert_eq!(first.kind, Some(HandshakeKind::Full));
    let second = handshake(server, client, "api.openai.com").await.unwrap();
    assert_eq!(second.kind, Some(HandshakeKind::Resumed));
}

#[tokio::test]
async fn resumption_works_across_alpn_variants_of_one_cache() {
    let (_tmp, ca) = temp_ca();
    let leaves = Arc::new(LeafCache::new(ca.clone(), 16));
    let client = client_trusting(&[ca.cert_der()], &[b"http/1.1"]);
    let both = mitm_server_config(leaves.clone());
    let h1_only = mitm_server_config_with_alpn(leaves, vec![b"http/1.1".to_vec()]);
    handshake(both, client.clone(), "api.openai.com")
        .await
        .unwrap();
    let second = handshake(h1_only, client, "api.openai.com").await.unwrap();
    assert_eq!(second.kind, Some(HandshakeKind::Resumed));
}

#[tokio::test]
async fn unmintable_sni_fails_the_handshake_cleanly() {
    let (_tmp, ca) = temp_ca();
    let leaves = Arc::new(LeafCache::new(ca.clone(), 16));
    let client = client_trusting(&[ca.cert_der()], &[]);
    // "1.2.3" is a valid rustls ServerName (DNS syntax) but we refuse to mint it.
    let err = handshake(mitm_server_config(leaves.clone()), client, "1.2.3")
        .await
        .unwrap_err();
    assert!(!err.is_empty());
    assert_eq!(leaves.minted(), 0);
}
