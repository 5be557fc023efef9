//! Tests for the device CA: creation, identical reload, re-issue from the same key.
//! Offline only; they must never touch the network or the real keyring.

use super::*;
use x509_parser::prelude::*;

fn setup() -> (tempfile::TempDir, KeyStore, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let store = KeyStore::open_file(&tmp.path().join("keys")).unwrap();
    let certs = tmp.path().join("certs");
    (tmp, store, certs)
}

#[test]
fn created_once_then_reloaded_identically() {
    let (_tmp, store, certs) = setup();
    let first = DeviceCa::load_or_create(&store, &certs, "laptop-42").unwrap();
    assert_eq!(first.cert_path(), certs.join(CA_CERT_FILE));
    assert!(store.get(CA_KEY_NAME).unwrap().is_some());
    let second = DeviceCa::load_or_create(&store, &certs, "laptop-42").unwrap();
    assert_eq!(first.cert_der(), second.cert_der());
    assert_eq!(first.cert_pem(), second.cert_pem());
    assert_eq!(
        fs::read_to_string(first.cert_path()).unwrap(),
        first.cert_pem()
    );
}

#[test]
fn ca_certificate_has_the_promised_shape() {
    let (_tmp, store, certs) = setup();
    let ca = DeviceCa::load_or_create(&store, &certs, "laptop-42").unwrap();
    assert_eq!(ca.common_name(), "Palisade Device CA laptop-42");
    let der = ca.cert_der();
    let (_, cert) = parse_x509_certificate(&der).unwrap();
    let bc = cert.basic_constraints().unwrap().unwrap();
    assert!(bc.critical);
    assert!(bc.value.ca);
    assert_eq!(bc.value.path_len_constraint, Some(0));
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign() && ku.crl_sign());
    assert!(!ku.digital_signature());
    assert_eq!(
        cert.public_key().algorithm.algorithm,
        x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
    );
    let lifetime = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    let years = lifetime as f64 / (365.25 * 86_400.0);
    assert!((9.9..=10.1).contains(&years), "CA lifetime {years} years");
    assert!(cert.validity().is_valid(), "valid now");
    assert_eq!(cert.subject(), cert.issuer(), "self-signed");
    // The key in the store is PKCS#8 PEM.
    let key = store.get(CA_KEY_NAME).unwrap().unwrap();
    assert!(key
        .expose_str()
        .unwrap()
        .starts_with("-----BEGIN PRIVATE KEY-----"));
}

#[test]
fn full_cn_is_used_as_is_and_stays_stable_when_label_changes() {
    let (_tmp, store, certs) = setup();
    let ca = DeviceCa::load_or_create(&store, &certs, "Palisade Device CA dev-1").unwrap();
    assert_eq!(ca.common_name(), "Palisade Device CA dev-1");
    let again = DeviceCa::load_or_create(&store, &certs, "renamed-host").unwrap();
    assert_eq!(again.common_name(), "Palisade Device CA dev-1");
    assert_eq!(ca.cert_der(), again.cert_der());
}

#[test]
fn missing_cert_is_reissued_from_the_same_key() {
    let (_tmp, store, certs) = setup();
    let first = DeviceCa::load_or_create(&store, &certs, "laptop").unwrap();
    let key_before = store.get(CA_KEY_NAME).unwrap().unwrap();
    fs::remove_file(first.cert_path()).unwrap();
    let second = DeviceCa::load_or_create(&store, &certs, "laptop").unwrap();
    assert!(second.cert_path().exists());
    assert_eq!(
        store.get(CA_KEY_NAME).unwrap().unwrap(),
        key_before,
        "key unchanged"
    );
    assert_ne!(
        first.cert_der(),
        second.cert_der(),
        "a new certificate (new serial, new dates)"
    );
    let pk = |der: &CertificateDer<'_>| {
        let (_, c) = parse_x509_certificate(der).unwrap();
        (
            c.public_key().raw.to_vec(),
            c.subject().to_string(),
            c.serial.clone(),
        )
    };
    let (pk1, subj1, serial1) = pk(&first.cert_der());
    let (pk2, subj2, serial2) = pk(&second.cert_der());
    assert_eq!(pk1, pk2, "same key, so installed trust stays valid");
    assert_eq!(subj1, subj2);
    assert_ne!(serial1, serial2, "re-issue never repeats issuer+serial");
}

#[test]
fn cert_for_another_key_or_garbage_is_reissued() {
    let (_tmp, store, certs) = setup();
    let ca = DeviceCa::load_or_create(&store, &certs, "laptop").unwrap();
    // Another device's CA certificate in our cert slot.
    let (_tmp2, other_store, other_certs) = setup();
    let other = DeviceCa::load_or_create(&other_store, &other_certs, "other").unwrap();
    fs::write(ca.cert_path(), other.cert_pem()).unwrap();
    let fixed = DeviceCa::load_or_create(&store, &certs, "laptop").unwrap();
    let (fixed_der, orig_der) = (fixed.cert_der(), ca.cert_der());
    let (_, c) = parse_x509_certificate(&fixed_der).unwrap();
    let (_, orig) = parse_x509_certificate(&orig_der).unwrap();
    assert_eq!(c.public_key().raw, orig.public_key().raw);

    for garbage in [
        &b"not a pem at all"[..],
        b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
        b"\xff\xfe\x00",
    ] {
        fs::write(ca.cert_path(), garbage).unwrap();
        let fixed = DeviceCa::load_or_create(&store, &certs, "laptop").unwrap();
        let fixed_der = fixed.cert_der();
        let (_, c) = parse_x509_certificate(&fixed_der).unwrap();
        assert_eq!(c.public_key().raw, orig.public_key().raw);
        assert_eq!(
            fs::read_to_string(ca.cert_path()).unwrap(),
            fixed.cert_pem()
        );
    }
}

#[test]
fn corrupt_stored_key_is_a_clear_error() {
    let (_tmp, store, certs) = setup();
    store
        .set(
            CA_KEY_NAME,
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
    let err = DeviceCa::load_or_create(&store, &certs, "laptop").unwrap_err();
    assert!(matches!(err, TlsError::InvalidKey { .. }), "{err:?}");
    assert!(err.to_string().contains("device-ca-key"), "{err}");
    store.set(CA_KEY_NAME, b"\xff\xfe").unwrap();
    let err = DeviceCa::load_or_create(&store, &certs, "laptop").unwrap_err();
    assert!(err.to_string().contains("not UTF-8"), "{err}");
}

#[test]
fn bad_labels_are_rejected() {
    let (_tmp, store, certs) = setup();
    for bad in ["", "   ", "a\nb", "tab\there"] {
        let err = DeviceCa::load_or_create(&store, &certs, bad).unwrap_err();
        assert!(
            matches!(err, TlsError::InvalidCommonName { .. }),
            "{bad:?}: {err:?}"
        );
    }
    assert!(
        store.get(CA_KEY_NAME).unwrap().is_none(),
        "nothing created for a bad label"
    );
}

#[test]
fn long_labels_are_cut_to_64_characters() {
    let (_tmp, store, certs) = setup();
    let label = "ü".repeat(80);
    let ca = DeviceCa::load_or_create(&store, &certs, &label).unwrap();
    assert_eq!(ca.common_name().chars().count(), MAX_CN_CHARS);
    assert!(ca.common_name().starts_with("Palisade Device CA üü"));
}

#[test]
fn debug_never_prints_key_material() {
    let (_tmp, store, certs) = setup();
    let ca = DeviceCa::load_or_create(&store, &certs, "laptop").unwrap();
    let key = store.get(CA_KEY_NAME).unwrap().unwrap();
    let pem = key.expose_str().unwrap();
    let body: String = pem.lines().nth(1).unwrap().to_string();
    let dbg = format!("{ca:?} {ca:#?}");
    assert!(!dbg.contains(&body), "{dbg}");
    assert!(!dbg.contains("PRIVATE KEY"), "{dbg}");
    assert!(dbg.contains("Palisade Device CA laptop"));
}
