//! On-demand leaf certificates for intercepted hosts, and the bounded,
//! single-flight cache that holds them.
//!
//! A leaf has SAN = the host (DNS name, or IP SAN for IP literals), EKU
//! serverAuth, KeyUsage digitalSignature, an ECDSA P-256 key and at most 397
//! days of validity (Apple's rule), starting a day in the past for clock
//! skew. Concurrent first requests for one host mint exactly one
//! certificate. This module must never mint for a name it has not
//! validated, and never mint a CA or wildcard certificate.

use crate::ca::BACKDATE;
use crate::{crypto, DeviceCa, TlsError};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{
    ClientHello, ResolvesServerCert, ServerSessionMemoryCache, StoresServerSessions,
};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};
use tracing::{debug, warn};
use zeroize::Zeroize;

/// How long a minted leaf is valid after "now" (plus [`BACKDATE`] before).
pub const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 86_400);
/// Apple's limit on total validity (notAfter - notBefore) for TLS server certs.
pub const LEAF_MAX_VALIDITY: Duration = Duration::from_secs(397 * 86_400);
/// A cached leaf is re-minted when it expires sooner than this.
pub const LEAF_RENEW_BEFORE: Duration = Duration::from_secs(7 * 86_400);
/// A sensible cache size for a laptop's set of AI hosts.
pub const DEFAULT_LEAF_CACHE_CAPACITY: usize = 1024;
/// Sessions remembered for resumption, shared by every config built from one cache.
pub const SESSION_CACHE_SIZE: usize = 4096;

/// Mints leaf certificates per host on demand, signed by the [`DeviceCa`],
/// and keeps up to `capacity` of them (least recently used is evicted).
pub struct LeafCache {
    ca: Arc<DeviceCa>,
    capacity: usize,
    slots: Mutex<Slots>,
    minted: AtomicU64,
    sessions: Arc<dyn StoresServerSessions>,
}

struct Slots {
    map: HashMap<String, Slot>,
    tick: u64,
}

struct Slot {
    /// Per-host lock: the first caller mints while later callers wait on it.
    leaf: Arc<Mutex<Option<Leaf>>>,
    last_used: u64,
}

#[derive(Clone)]
struct Leaf {
    key: Arc<CertifiedKey>,
    renew_at: SystemTime,
}

/// A validated, normalised certificate subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LeafName {
    Dns(String),
    Ip(IpAddr),
}

// === impl LeafCache ===

impl LeafCache {
    /// A cache holding at most `capacity` leaves (a capacity of 0 is treated as 1).
    pub fn new(ca: Arc<DeviceCa>, capacity: usize) -> Self {
        LeafCache {
            ca,
            capacity: capacity.max(1),
            slots: Mutex::new(Slots {
                map: HashMap::new(),
                tick: 0,
            }),
            minted: AtomicU64::new(0),
            sessions: ServerSessionMemoryCache::new(SESSION_CACHE_SIZE),
        }
    }

    /// The leaf for `host` (a DNS name or IP literal, as seen in SNI or
    /// CONNECT), minted on first use. Case and a trailing dot are ignored.
    pub fn get(&self, host: &str) -> Result<Arc<CertifiedKey>, TlsError> {
        let name = LeafName::parse(host)?;
        let key = name.cache_key();
        let cell = self.slot(&key);
        let mut leaf = lock(&cell);
        if let Some(existing) = leaf.as_ref() {
            if SystemTime::now() < existing.renew_at {
                return Ok(existing.key.clone());
            }
            debug!(host = %key, "Leaf certificate near expiry, re-minting");
        }
        let fresh = mint(&self.ca, &name)?;
        self.minted.fetch_add(1, Ordering::Relaxed);
        debug!(host = %key, "Minted leaf certificate");
        let out = fresh.key.clone();
        *leaf = Some(fresh);
        Ok(out)
    }

    /// How many certificates were minted so far (for tests / metrics).
    pub fn minted(&self) -> u64 {
        self.minted.load(Ordering::Relaxed)
    }

    /// How many hosts are cached now (never more than `capacity`).
    pub fn len(&self) -> usize {
        lock(&self.slots).map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn ca(&self) -> &Arc<DeviceCa> {
        &self.ca
    }

    /// Session store shared by all server configs built from this cache.
    pub(crate) fn sessions(&self) -> Arc<dyn StoresServerSessions> {
        self.sessions.clone()
    }

    /// The slot for `key`, inserting one (and evicting the least recently
    /// used) if needed. Only map bookkeeping happens under the cache lock.
    fn slot(&self, key: &str) -> Arc<Mutex<Option<Leaf>>> {
        let mut slots = lock(&self.slots);
        slots.tick += 1;
        let tick = slots.tick;
        if let Some(slot) = slots.map.get_mut(key) {
            slot.last_used = tick;
            return slot.leaf.clone();
        }
        if slots.map.len() >= self.capacity {
            // O(capacity), but only on a miss, which also mints a certificate.
            if let Some(victim) = slots
                .map
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| k.clone())
            {
                slots.map.remove(&victim);
                debug!(host = %victim, "Evicted leaf certificate from cache");
            }
        }
        let leaf = Arc::new(Mutex::new(None));
        slots.map.insert(
            key.to_string(),
            Slot {
                leaf: leaf.clone(),
                last_used: tick,
            },
        );
        leaf
    }
}

impl ResolvesServerCert for LeafCache {
    /// Uses the SNI name; `None` (handshake fails) without SNI or for a name
    /// that cannot be certified. The proxy handles no-SNI hellos itself with
    /// [`crate::single_cert_server_config`].
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let host = client_hello.server_name()?;
        match self.get(host) {
            Ok(key) => Some(key),
            Err(error) => {
                warn!(%error, host, "Cannot mint leaf certificate");
                None
            }
        }
    }
}

impl fmt::Debug for LeafCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeafCache")
            .field("ca", &self.ca.common_name())
            .field("capacity", &self.capacity)
            .field("cached", &self.len())
            .field("minted", &self.minted())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves consistent data here (a slot
    // map, or an Option that is only replaced whole), so poison is ignored.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

// === impl LeafName ===

impl LeafName {
    /// Validate and normalise `host`: lower-case, no trailing dot, brackets
    /// stripped from IPv6 literals. Wildcards and empty labels are refused.
    pub(crate) fn parse(host: &str) -> Result<LeafName, TlsError> {
        let err = |reason| {
            Err(TlsError::InvalidHost {
                host: host.to_string(),
                reason,
            })
        };
        let trimmed = host.strip_suffix('.').unwrap_or(host);
        if trimmed.is_empty() {
            return err("empty");
        }
        let unbracketed = trimmed
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(trimmed);
        if let Ok(ip) = unbracketed.parse::<IpAddr>() {
            return Ok(LeafName::Ip(ip));
        }
        if trimmed.contains('*') {
            return err("wildcards are never minted");
        }
        if trimmed.len() > 253 {
            return err("longer than 253 characters");
        }
        let lower = trimmed.to_ascii_lowercase();
        if rustls::pki_types::DnsName::try_from(lower.as_str()).is_err() {
            return err("not a valid DNS name");
        }
        // DnsName accepts all-numeric names like "1.2.3"; they are not hosts.
        if lower
            .split('.')
            .all(|label| label.bytes().all(|b| b.is_ascii_digit()))
        {
            return err("numeric name that is not an IP address");
        }
        Ok(LeafName::Dns(lower))
    }

    fn cache_key(&self) -> String {
        match self {
            LeafName::Dns(name) => name.clone(),
            LeafName::Ip(ip) => ip.to_string(),
        }
    }
}

/// Mint a leaf for `name`, signed by `ca`.
fn mint(ca: &DeviceCa, name: &LeafName) -> Result<Leaf, TlsError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name.cache_key());
    dn.push(DnType::OrganizationName, "Palisade");
    params.distinguished_name = dn;
    params.subject_alt_names = vec![match name {
        LeafName::Dns(dns) => {
            SanType::DnsName(dns.clone().try_into().map_err(|_| TlsError::InvalidHost {
                host: dns.clone(),
                reason: "not IA5",
            })?)
        }
        LeafName::Ip(ip) => SanType::IpAddress(*ip),
    }];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let now = SystemTime::now();
    let not_before = now - BACKDATE;
    // Never outlive the CA (a leaf past its issuer is rejected anyway).
    let not_after = (now + LEAF_VALIDITY).min(ca.not_after());
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    params.serial_number = Some(crypto::random_serial()?);

    let key =
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(TlsError::cert_gen("leaf key"))?;
    let cert = params
        .signed_by(&key, ca.issuer())
        .map_err(TlsError::cert_gen("leaf certificate"))?;
    let mut key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signer = crypto::provider()
        .key_provider
        .load_private_key(key_der.clone_key());
    key_der.zeroize();
    let signer = signer?;
    let renew_at = not_after
        .checked_sub(LEAF_RENEW_BEFORE)
        .unwrap_or(not_after);
    Ok(Leaf {
        key: Arc::new(CertifiedKey::new(vec![cert.der().clone()], signer)),
        renew_at,
    })
}

#[cfg(test)]
mod tests;
