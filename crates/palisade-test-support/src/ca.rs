//! A throwaway certificate authority for tests (rcgen, ECDSA P-256) that
//! issues server certificates for given DNS names and IPs.
//!
//! Test-only: keys live in memory and are never written anywhere or printed.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

pub struct TestCa {
    params: CertificateParams,
    key: KeyPair,
    cert: rcgen::Certificate,
}

impl TestCa {
    pub fn new() -> Self {
        Self::with_name("Palisade Test CA")
    }

    /// A CA with a given common name (two CAs in one test stay distinguishable).
    pub fn with_name(common_name: &str) -> Self {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("generate CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("self-sign CA");
        Self { params, key, cert }
    }

    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// A leaf for `names` (DNS names or IP literals), with SAN and EKU
    /// serverAuth. Returns the chain (leaf, CA) and the leaf's PKCS#8 key.
    pub fn issue(&self, names: &[&str]) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("generate leaf key");
        let mut params = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap_or_else(|e| panic!("invalid certificate names {names:?}: {e}"));
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, *first);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let issuer = Issuer::from_params(&self.params, &self.key);
        let leaf = params.signed_by(&key, &issuer).expect("sign leaf");
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (vec![leaf.der().clone(), self.cert_der()], key_der)
    }

    /// A root store holding only this CA.
    pub fn root_store(&self) -> rustls::RootCertStore {
        let mut store = rustls::RootCertStore::empty();
        store.add(self.cert_der()).expect("test CA is a valid trust anchor");
        store
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").field("key", &"...").finish()
    }
}
