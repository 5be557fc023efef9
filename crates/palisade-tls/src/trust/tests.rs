//! Tests for upstream trust: extra bundles, bad bundles, the combined bundle.
//! Offline only; they must never touch the network or the real keyring.

use super::*;
use crate::test_util::{handshake, temp_ca};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::ServerConfig;

/// A test CA (as a TLS-inspecting company proxy would have) and a server
/// certificate for `host` signed by it.
fn upstream_with_private_ca(host: &str) -> (String, Arc<ServerConfig>) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec![host.to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let server = ServerConfig::builder_with_provider(crypto::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    (ca_cert.pem(), Arc::new(server))
}

#[tokio::test]
async fn extra_bundle_is_trusted_on_top_of_os_roots() {
    let (ca_pem, server) = upstream_with_private_ca("upstream.test");
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("corp-ca.pem");
    fs::write(&bundle, &ca_pem).unwrap();

    let with = upstream_client_config(Some(&bundle), vec![b"http/1.1".to_vec()]).unwrap();
    assert_eq!(with.alpn_protocols, vec![b"http/1.1".to_vec()]);
    handshake(server.clone(), with, "upstream.test")
        .await
        .unwrap();

    let without = upstream_client_config(None, vec![]).unwrap();
    let err = handshake(server, without, "upstream.test")
        .await
        .unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
}

#[test]
fn missing_bundle_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("nope.pem");
    let err = upstream_client_config(Some(&path), vec![]).unwrap_err();
    assert!(matches!(err, TlsError::Io { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

#[test]
fn garbage_bundles_give_clear_errors_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let key_only = KeyPair::generate().unwrap().serialize_pem();
    let not_x509 =
        "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n".to_string();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty.pem", vec![], "no certificates found"),
        (
            "text.pem",
            b"this is not pem".to_vec(),
            "no certificates found",
        ),
        (
            "binary.pem",
            vec![0xff, 0x00, 0x13, 0x37],
            "no certificates found",
        ),
        ("key.pem", key_only.into_bytes(), "no certificates found"),
        ("notx509.pem", not_x509.into_bytes(), "not valid X.509"),
        (
            "badb64.pem",
            b"-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n".to_vec(),
            "bad certificate in",
        ),
    ];
    for (name, contents, want) in cases {
        let path = tmp.path().join(name);
        fs::write(&path, contents).unwrap();
        let err = upstream_client_config(Some(&path), vec![]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(want), "{name}: {msg}");
        assert!(msg.contains(&path.display().to_string()), "{name}: {msg}");
    }
}

#[test]
fn pem_roundtrip() {
    let (_tmp, ca) = temp_ca();
    let pem = cert_der_to_pem(&ca.cert_der());
    assert_eq!(pem, ca.cert_pem().replace("\r\n", "\n"));
    let back = pem_certs(pem.as_bytes()).unwrap();
    assert_eq!(back, vec![ca.cert_der()]);
}

#[test]
fn combined_bundle_holds_device_ca_once_plus_os_roots() {
    let (_tmp, ca) = temp_ca();
    let bundle = combined_bundle_pem(&ca).unwrap();
    let certs = pem_certs(bundle.as_bytes()).unwrap();
    assert_eq!(certs[0], ca.cert_der());
    assert_eq!(certs.iter().filter(|c| **c == ca.cert_der()).count(), 1);
    let os = rustls_native_certs::load_native_certs().certs.len();
    assert!(
        certs.len() > 1 && certs.len() <= os + 1,
        "{} certs, {os} OS roots",
        certs.len()
    );
    for c in &certs {
        x509_parser::parse_x509_certificate(c).unwrap();
    }
}
