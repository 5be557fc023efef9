//! Test helpers: an in-memory TLS handshake over a tokio duplex pipe.
//! Test-only; it must never be compiled into the library proper.

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, HandshakeKind, RootCertStore, ServerConfig};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug)]
pub(crate) struct Outcome {
    pub alpn: Option<Vec<u8>>,
    pub kind: Option<HandshakeKind>,
    pub server_sni: Option<String>,
}

/// Handshake, send "ping", receive "pong". The client error is returned
/// (the server's failure is a consequence of it).
pub(crate) async fn handshake(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    name: &str,
) -> Result<Outcome, String> {
    let (c, s) = tokio::io::duplex(64 * 1024);
    let server_task = tokio::spawn(async move {
        let mut tls = tokio_rustls::TlsAcceptor::from(server)
            .accept(s)
            .await
            .map_err(|e| e.to_string())?;
        let sni = tls.get_ref().1.server_name().map(str::to_string);
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        assert_eq!(&buf, b"ping");
        tls.write_all(b"pong").await.map_err(|e| e.to_string())?;
        tls.shutdown().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(sni)
    });
    let name = ServerName::try_from(name.to_string()).map_err(|e| e.to_string())?;
    let client_result = async {
        let mut tls = tokio_rustls::TlsConnector::from(client)
            .connect(name, c)
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        assert_eq!(&buf, b"pong");
        let conn = tls.get_ref().1;
        Ok::<_, String>((
            conn.alpn_protocol().map(<[u8]>::to_vec),
            conn.handshake_kind(),
        ))
    }
    .await;
    let server_result = server_task.await.map_err(|e| e.to_string())?;
    let (alpn, kind) = client_result?;
    let server_sni = server_result?;
    Ok(Outcome {
        alpn,
        kind,
        server_sni,
    })
}

/// A client trusting only `roots`' certificates, with the given ALPN.
pub(crate) fn client_trusting(
    certs: &[rustls::pki_types::CertificateDer<'static>],
    alpn: &[&[u8]],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in certs {
        roots.add(c.clone()).unwrap();
    }
    crate::upstream_client_config_with_roots(roots, alpn.iter().map(|a| a.to_vec()).collect())
}

/// A fresh device CA in a temp dir (file key store).
pub(crate) fn temp_ca() -> (tempfile::TempDir, Arc<crate::DeviceCa>) {
    let tmp = tempfile::tempdir().unwrap();
    let store = crate::KeyStore::open_file(&tmp.path().join("keys")).unwrap();
    let ca =
        crate::DeviceCa::load_or_create(&store, &tmp.path().join("certs"), "test-device").unwrap();
    (tmp, Arc::new(ca))
}
