//! Tests for leaf minting and the cache: certificate shape, single-flight, bounds.
//! Offline only; they must never touch the network or the real keyring.

use super::*;
use crate::test_util::temp_ca;
use std::sync::Barrier;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::*;

fn leaf_der(key: &CertifiedKey) -> Vec<u8> {
    assert_eq!(key.cert.len(), 1, "chain is the leaf only");
    key.cert[0].to_vec()
}

#[test]
fn dns_leaf_has_san_eku_ku_and_short_validity() {
    let (_tmp, ca) = temp_ca();
    let cache = LeafCache::new(ca.clone(), 16);
    let key = cache.get("api.openai.com").unwrap();
    let der = leaf_der(&key);
    let (_, cert) = parse_x509_certificate(&der).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap().value;
    assert_eq!(
        san.general_names,
        vec![GeneralName::DNSName("api.openai.com")]
    );
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth);
    assert!(!eku.client_auth && !eku.any);
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature());
    assert!(!ku.key_cert_sign());
    assert!(!cert.basic_constraints().unwrap().unwrap().value.ca);
    let v = cert.validity();
    let lifetime = v.not_after.timestamp() - v.not_before.timestamp();
    assert!(
        lifetime <= LEAF_MAX_VALIDITY.as_secs() as i64,
        "lifetime {lifetime}s > 397 days"
    );
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        v.not_before.timestamp() <= now - 3600,
        "backdated for clock skew"
    );
    assert!(v.is_valid());
    let ca_der = ca.cert_der();
    let (_, ca_cert) = parse_x509_certificate(&ca_der).unwrap();
    assert_eq!(cert.issuer(), ca_cert.subject());
    assert_eq!(
        cert.public_key().algorithm.algorithm,
        x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
    );
    assert!(cert
        .extensions()
        .iter()
        .any(|e| e.oid == x509_parser::oid_registry::OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER));
}

#[test]
fn ip_literals_get_ip_sans() {
    let (_tmp, ca) = temp_ca();
    let cache = LeafCache::new(ca, 16);
    for (host, want) in [
        ("127.0.0.1", vec![127u8, 0, 0, 1]),
        ("[::1]", {
            let mut v = vec![0u8; 16];
            v[15] = 1;
            v
        }),
    ] {
        let der = leaf_der(&cache.get(host).unwrap());
        let (_, cert) = parse_x509_certificate(&der).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap().value;
        assert_eq!(
            san.general_names,
            vec![GeneralName::IPAddress(&want)],
            "{host}"
        );
    }
    // "::1" and "[::1]" are the same host.
    cache.get("::1").unwrap();
    assert_eq!(cache.minted(), 2);
}

#[test]
fn case_and_trailing_dot_share_one_leaf() {
    let (_tmp, ca) = temp_ca();
    let cache = LeafCache::new(ca, 16);
    let a = cache.get("api.openai.com").unwrap();
    let b = cache.get("API.OpenAI.com.").unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(cache.minted(), 1);
}

#[test]
fn bad_hosts_are_refused_with_a_reason() {
    let (_tmp, ca) = temp_ca();
    let cache = LeafCache::new(ca, 16);
    let long = format!("{}.com", "a".repeat(250));
    for bad in [
        "",
        ".",
        "*.openai.com",
        "a..b",
        "foo bar",
        "1.2.3",
        "-bad-.com",
        "host/path",
        "[::1",
        long.as_str(),
    ] {
        let err = cache.get(bad).unwrap_err();
        assert!(
            matches!(err, TlsError::InvalidHost { .. }),
            "{bad:?}: {err:?}"
        );
        assert!(err.to_string().contains("invalid host"), "{err}");
    }
    assert_eq!(cache.minted(), 0);
    assert!(cache.is_empty());
}

#[test]
fn concurrent_first_requests_mint_exactly_once() {
    let (_tmp, ca) = temp_ca();
    let cache = Arc::new(LeafCache::new(ca, 16));
    let barrier = Arc::new(Barrier::new(32));
    let handles: Vec<_> = (0..32)
        .map(|_| {
            let (cache, barrier) = (cache.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                cache.get("api.openai.com").unwrap()
            })
        })
        .collect();
    let keys: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(cache.minted(), 1);
    assert!(keys.iter().all(|k| Arc::ptr_eq(k, &keys[0])));
}

#[test]
fn cache_is_bounded_and_evicts_least_recently_used() {
    let (_tmp, ca) = temp_ca();
    let cache = LeafCache::new(ca, 4);
    for i in 0..10 {
        cache.get(&format!("h{i}.example.com")).unwrap();
        // Keep h0 hot: it must survive every eviction.
        cache.get("h0.example.com").unwrap();
        assert!(cache.len() <= 4);
    }
    assert_eq!(cache.len(), 4);
    assert_eq!(cache.minted(), 10, "h0 was never re-minted");
    cache.get("h9.example.com").unwrap();
    assert_eq!(cache.minted(), 10, "most recent host still cached");
    cache.get("h1.example.com").unwrap();
    assert_eq!(cache.minted(), 11, "evicted host is minted again");
}

#[test]
fn zero_capacity_still_caches_one() {
    let (_tmp, ca) = temp_ca();
    let cache = LeafCache::new(ca, 0);
    assert_eq!(cache.capacity(), 1);
    cache.get("a.example").unwrap();
    cache.get("a.example").unwrap();
    assert_eq!(cache.minted(), 1);
    cache.get("b.example").unwrap();
    assert_eq!(cache.len(), 1);
}

#[test]
fn debug_shows_counts_not_keys() {
    let (_tmp, ca) = temp_ca();
    let cache = LeafCache::new(ca, 4);
    cache.get("a.example").unwrap();
    let dbg = format!("{cache:?}");
    assert!(dbg.contains("minted: 1"), "{dbg}");
    assert!(!dbg.to_lowercase().contains("private"), "{dbg}");
}
