//! Tests for device identities: enrollment round trip, refusals, mTLS.
//! Offline only; they must never touch the network or the real keyring.

use super::*;
use x509_parser::extensions::GeneralName;
use x509_parser::parse_x509_certificate;

const DAY: Duration = Duration::from_secs(86_400);

fn parse_pem_cert(pem: &str) -> CertificateDer<'static> {
    crate::trust::pem_certs(pem.as_bytes()).unwrap().remove(0)
}

#[test]
fn key_pair_is_pkcs8_p256() {
    let (key, public) = generate_key_pair().unwrap();
    assert!(key
        .expose_str()
        .unwrap()
        .starts_with("-----BEGIN PRIVATE KEY-----"));
    assert!(public.starts_with("-----BEGIN PUBLIC KEY-----"));
    let kp = KeyPair::from_pem(key.expose_str().unwrap()).unwrap();
    assert_eq!(kp.algorithm(), &PKCS_ECDSA_P256_SHA256);
    assert_eq!(kp.public_key_pem(), public);
    assert_eq!(format!("{key:?}"), "Secret(..)");
}

#[test]
fn enrollment_roundtrip_yields_a_client_cert_for_the_device() {
    let (ca, ca_key) = IdentityCa::generate("Palisade Identity CA").unwrap();
    let (key, _) = generate_key_pair().unwrap();
    let csr = device_csr(&key, "dev-0190a1b2").unwrap();
    assert!(csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
    let cert_pem = ca.sign_device_csr(&csr, "dev-0190a1b2", 30 * DAY).unwrap();
    let der = parse_pem_cert(&cert_pem);
    assert_eq!(device_id_from_cert(&der).unwrap(), "dev-0190a1b2");

    let (_, cert) = parse_x509_certificate(&der).unwrap();
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth);
    assert!(!cert.basic_constraints().unwrap().unwrap().value.ca);
    let kp = KeyPair::from_pem(key.expose_str().unwrap()).unwrap();
    assert_eq!(
        cert.public_key().subject_public_key.data.as_ref(),
        kp.public_key_raw(),
        "the device's key"
    );
    let ca_der = ca.cert_der();
    let (_, ca_cert) = parse_x509_certificate(&ca_der).unwrap();
    assert_eq!(cert.issuer(), ca_cert.subject());

    // Reloading the CA from PEM signs just the same.
    let again = IdentityCa::from_pem(&ca.cert_pem(), &ca_key).unwrap();
    again.sign_device_csr(&csr, "dev-0190a1b2", DAY).unwrap();
    assert!(!format!("{again:?}").contains("PRIVATE"));
}

#[tokio::test]
async fn issued_certs_work_for_mtls() {
    let (ca, _) = IdentityCa::generate("Palisade Identity CA").unwrap();
    let (server_cert, server_key) = ca
        .issue_server_cert(&["localhost".into(), "127.0.0.1".into()], DAY)
        .unwrap();
    let (dev_key, _) = generate_key_pair().unwrap();
    let dev_cert = ca
        .sign_device_csr(&device_csr(&dev_key, "dev-1").unwrap(), "dev-1", DAY)
        .unwrap();

    let provider = crypto::provider();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der()).unwrap();
    let roots = std::sync::Arc::new(roots);
    let client_verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .build()
    .unwrap();
    let key_der = |s: &Secret| {
        rustls::pki_types::PrivateKeyDer::Pkcs8(
            KeyPair::from_pem(s.expose_str().unwrap())
                .unwrap()
                .serialize_der()
                .into(),
        )
    };
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(vec![parse_pem_cert(&server_cert)], key_der(&server_key))
        .unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![parse_pem_cert(&dev_cert)], key_der(&dev_key))
        .unwrap();
    crate::test_util::handshake(
        std::sync::Arc::new(server),
        std::sync::Arc::new(client),
        "localhost",
    )
    .await
    .unwrap();
}

#[test]
fn csr_for_another_device_is_refused() {
    let (ca, _) = IdentityCa::generate("Palisade Identity CA").unwrap();
    let (key, _) = generate_key_pair().unwrap();
    let csr = device_csr(&key, "dev-evil").unwrap();
    let err = ca.sign_device_csr(&csr, "dev-1", DAY).unwrap_err();
    assert!(
        err.to_string().contains("enrollment is for \"dev-1\""),
        "{err}"
    );
}

#[test]
fn tampered_or_garbage_csr_is_refused() {
    let (ca, _) = IdentityCa::generate("Palisade Identity CA").unwrap();
    let err = ca.sign_device_csr("hello", "dev-1", DAY).unwrap_err();
    assert!(
        err.to_string().contains("not a PEM certificate request"),
        "{err}"
    );

    // Flip one byte inside the signed body: the signature no longer verifies.
    let (key, _) = generate_key_pair().unwrap();
    let csr = device_csr(&key, "dev-1").unwrap();
    let mut der = rustls_pemfile::csr(&mut csr.as_bytes())
        .unwrap()
        .unwrap()
        .as_ref()
        .to_vec();
    let i = der.windows(5).position(|w| w == b"dev-1").unwrap();
    der[i + 4] = b'2';
    let tampered = pem_encode("CERTIFICATE REQUEST", &der);
    let err = ca.sign_device_csr(&tampered, "dev-2", DAY).unwrap_err();
    assert!(
        err.to_string().contains("signature does not verify"),
        "{err}"
    );
}

#[test]
fn requested_ca_bit_is_ignored() {
    let (ca, _) = IdentityCa::generate("Palisade Identity CA").unwrap();
    let (key, _) = generate_key_pair().unwrap();
    let kp = KeyPair::from_pem(key.expose_str().unwrap()).unwrap();
    let mut params = device_params("dev-1").unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let csr = params.serialize_request(&kp).unwrap().pem().unwrap();
    let der = parse_pem_cert(&ca.sign_device_csr(&csr, "dev-1", DAY).unwrap());
    let (_, cert) = parse_x509_certificate(&der).unwrap();
    assert!(!cert.basic_constraints().unwrap().unwrap().value.ca);
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth);
}

#[test]
fn bad_device_ids_are_refused() {
    let (key, _) = generate_key_pair().unwrap();
    let long = "a".repeat(65);
    for bad in ["", "a b", "a/b", "dev\n1", long.as_str()] {
        let err = device_csr(&key, bad).unwrap_err();
        assert!(
            err.to_string().contains("invalid device id"),
            "{bad:?}: {err}"
        );
    }
    let err = device_csr(&Secret::from("nope".to_string()), "dev-1").unwrap_err();
    assert!(matches!(err, TlsError::InvalidKey { .. }), "{err:?}");
}

#[test]
fn device_id_from_cert_rejects_certs_without_a_device() {
    let (ca, _) = IdentityCa::generate("Palisade Identity CA").unwrap();
    let (server_cert, _) = ca.issue_server_cert(&["localhost".into()], DAY).unwrap();
    let err = device_id_from_cert(&parse_pem_cert(&server_cert)).unwrap_err();
    assert!(err.to_string().contains("names no device"), "{err}");
    let err = device_id_from_cert(&CertificateDer::from(vec![1, 2, 3])).unwrap_err();
    assert!(err.to_string().contains("not X.509"), "{err}");
    let der = parse_pem_cert(&server_cert);
    let (_, cert) = parse_x509_certificate(&der).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap().value;
    assert_eq!(san.general_names, vec![GeneralName::DNSName("localhost")]);
}

#[test]
fn mismatched_ca_key_is_refused() {
    let (ca, _) = IdentityCa::generate("A").unwrap();
    let (_, other_key) = IdentityCa::generate("B").unwrap();
    let err = IdentityCa::from_pem(&ca.cert_pem(), &other_key).unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");
    assert!(IdentityCa::generate("").is_err());
}

fn pem_encode(tag: &str, der: &[u8]) -> String {
    crate::trust::cert_der_to_pem(der).replace("CERTIFICATE", tag)
}
