//! Enrollment and admin bearer tokens: generated here, shown to a human
//! once, and stored only as SHA-256 hashes. This module must never log a raw
//! token, and the store must never receive one.

use crate::admin::rbac::Role;
use crate::store::{AuditSeal, Store, StoreError};
use base64::Engine;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

const ENROLL_PREFIX: &str = "pal_enroll_";
const ADMIN_PREFIX: &str = "pal_admin_";

/// A raw token, returned once to the caller. `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct RawToken(String);

impl RawToken {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for RawToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RawToken(...)")
    }
}

/// SHA-256 of a raw token, lowercase hex: what the store keeps.
pub fn hash_token(raw: &str) -> String {
    hex::encode(Sha256::digest(raw.as_bytes()))
}

fn generate(prefix: &str) -> RawToken {
    let bytes: [u8; 32] = rand::random();
    RawToken(format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// A newly created enrollment token.
#[derive(Debug, Clone)]
pub struct NewEnrollmentToken {
    pub id: String,
    pub token: RawToken,
    pub max_uses: u32,
    pub expires_at: DateTime<Utc>,
}

/// Create an enrollment token usable `max_uses` times until `expires_at`.
pub async fn create_enrollment_token(
    store: &Store,
    max_uses: u32,
    expires_at: DateTime<Utc>,
    note: Option<&str>,
) -> Result<NewEnrollmentToken, StoreError> {
    let token = generate(ENROLL_PREFIX);
    let id = store
        .create_enrollment_token(&hash_token(token.expose()), max_uses, expires_at, note)
        .await?;
    Ok(NewEnrollmentToken {
        id,
        token,
        max_uses,
        expires_at,
    })
}

/// [`create_enrollment_token`] with its admin audit entry (given the new
/// id) committed in the same transaction.
pub async fn create_enrollment_token_audited(
    store: &Store,
    max_uses: u32,
    expires_at: DateTime<Utc>,
    note: Option<&str>,
    seal: &AuditSeal<'_, String>,
) -> Result<NewEnrollmentToken, StoreError> {
    let token = generate(ENROLL_PREFIX);
    let id = store
        .create_enrollment_token_audited(&hash_token(token.expose()), max_uses, expires_at, note, seal)
        .await?;
    Ok(NewEnrollmentToken {
        id,
        token,
        max_uses,
        expires_at,
    })
}

/// Create an admin API token with the `admin` role (e.g. the bootstrap token
/// `palisade up` prints once).
pub async fn create_admin_token(store: &Store, name: &str) -> Result<RawToken, StoreError> {
    Ok(create_admin_token_with_role(store, name, Role::Admin).await?.1)
}

/// Create an admin API token with a role; returns its id and the raw token
/// (show it once; only its hash is kept).
pub async fn create_admin_token_with_role(
    store: &Store,
    name: &str,
    role: Role,
) -> Result<(String, RawToken), StoreError> {
    let token = generate(ADMIN_PREFIX);
    let id = store
        .create_admin_token_with_role(&hash_token(token.expose()), name, role.as_str(), None)
        .await?;
    Ok((id, token))
}

/// [`create_admin_token_with_role`] with its admin audit entry (given the
/// new id) committed in the same transaction.
pub async fn create_admin_token_audited(
    store: &Store,
    name: &str,
    role: Role,
    seal: &AuditSeal<'_, String>,
) -> Result<(String, RawToken), StoreError> {
    let token = generate(ADMIN_PREFIX);
    let id = store
        .create_admin_token_with_role(&hash_token(token.expose()), name, role.as_str(), Some(seal))
        .await?;
    Ok((id, token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_prefixed_and_hidden() {
        let a = generate(ENROLL_PREFIX);
        let b = generate(ENROLL_PREFIX);
        assert_ne!(a, b);
        assert!(a.expose().starts_with(ENROLL_PREFIX));
        assert_eq!(format!("{a:?}"), "RawToken(...)");
        assert_eq!(hash_token(a.expose()).len(), 64);
        assert_ne!(hash_token(a.expose()), hash_token(b.expose()));
    }

    #[tokio::test]
    async fn admin_token_resolves_only_by_its_hash() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("t.db"), 1)
            .await
            .unwrap();
        let t = create_admin_token(&store, "bootstrap").await.unwrap();
        assert_eq!(
            store
                .admin_token_name(&hash_token(t.expose()))
                .await
                .unwrap()
                .as_deref(),
            Some("bootstrap")
        );
        assert_eq!(store.admin_token_name(t.expose()).await.unwrap(), None);
    }

    #[tokio::test]
    async fn tokens_carry_their_role() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("t.db"), 1)
            .await
            .unwrap();
        let boot = create_admin_token(&store, "bootstrap").await.unwrap();
        let (id, viewer) = create_admin_token_with_role(&store, "dash", Role::Viewer)
            .await
            .unwrap();
        let who = |t: RawToken| {
            let store = store.clone();
            async move {
                store
                    .admin_token_identity(&hash_token(t.expose()))
                    .await
                    .unwrap()
                    .unwrap()
            }
        };
        assert_eq!(who(boot).await.role, "admin");
        let v = who(viewer).await;
        assert_eq!((v.id, v.name.as_str(), v.role.as_str()), (id, "dash", "viewer"));
    }
}
