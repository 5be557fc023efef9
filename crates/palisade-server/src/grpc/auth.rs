//! Authenticates a device from its TLS client certificate.
//!
//! The chain was already verified against the server CA by rustls during the
//! handshake; here we read the device id from the leaf certificate, check it
//! is the certificate on record for that device (by SHA-256 fingerprint), and
//! refuse revoked devices. Must never accept an id from anywhere else.

use crate::pki::{device_id_from_cert, fingerprint};
use crate::store::{DeviceAuth, Store, StoreError};
use tonic::{Request, Status};
use tracing::{error, warn};

/// A device proven by its certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeviceIdentity {
    pub id: String,
    /// SHA-256 of the certificate this connection presented.
    pub fingerprint: String,
}

/// The device identity a request's client certificate proves, or a status to return.
pub(crate) async fn authenticate<T>(
    store: &Store,
    req: &Request<T>,
) -> Result<DeviceIdentity, Status> {
    let certs = req.peer_certs().ok_or_else(|| {
        Status::unauthenticated("a device client certificate is required: enroll first")
    })?;
    let leaf = certs.first().ok_or_else(|| {
        Status::unauthenticated("a device client certificate is required: enroll first")
    })?;
    let id = device_id_from_cert(leaf).map_err(|e| {
        warn!(error = %e, "Client certificate without a device id");
        Status::unauthenticated(format!(
            "client certificate is not a device certificate: {e}"
        ))
    })?;
    let identity = DeviceIdentity {
        id,
        fingerprint: fingerprint(leaf),
    };
    let auth = store.touch_device(&identity.id).await;
    check(&identity, auth)?;
    Ok(identity)
}

/// Check again that the device is enrolled, unrevoked and on this certificate
/// (long-lived streams call this per batch, so a revocation bites at once).
pub(crate) async fn recheck(store: &Store, identity: &DeviceIdentity) -> Result<(), Status> {
    check(identity, store.device_auth(&identity.id).await)
}

fn check(
    identity: &DeviceIdentity,
    auth: Result<Option<DeviceAuth>, StoreError>,
) -> Result<(), Status> {
    let id = &identity.id;
    let auth = auth.map_err(|e| {
        error!(error = %e, device_id = %id, "Store unavailable during authentication");
        Status::unavailable("store unavailable, retry later")
    })?;
    let Some(auth) = auth else {
        warn!(device_id = %id, "Certificate for an unknown device");
        return Err(Status::unauthenticated(format!(
            "device {id} is not enrolled"
        )));
    };
    if let Some(at) = auth.revoked_at {
        warn!(device_id = %id, revoked_at = %at, "Revoked device refused");
        return Err(Status::permission_denied(format!(
            "device {id} was revoked at {}; re-enroll to continue",
            at.to_rfc3339()
        )));
    }
    if auth.cert_fingerprint != identity.fingerprint {
        warn!(device_id = %id, "Certificate is not the one on record for this device");
        return Err(Status::unauthenticated(format!(
            "certificate is not the current one for device {id}"
        )));
    }
    Ok(())
}
