//! A fake SIEM: a strict RFC 5424 parser and a syslog collector that reads
//! RFC 6587 octet-counted frames over TCP or TLS (RFC 5425) on loopback.
//!
//! The parser refuses anything RFC 5424's ABNF refuses (so a test catches a
//! malformed message instead of tolerating it); the collector records every
//! frame it reads, and counts framing errors instead of guessing.

use crate::TestCa;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// One structured-data element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdElement {
    pub id: String,
    /// Unescaped values, in order.
    pub params: Vec<(String, String)>,
}

impl SdElement {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// A parsed RFC 5424 message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogMessage {
    pub facility: u8,
    pub severity: u8,
    pub version: u32,
    /// `None` for NILVALUE.
    pub timestamp: Option<String>,
    pub hostname: Option<String>,
    pub app_name: Option<String>,
    pub procid: Option<String>,
    pub msgid: Option<String>,
    pub sd: Vec<SdElement>,
    /// MSG without the BOM.
    pub msg: Option<String>,
    /// MSG started with the UTF-8 BOM.
    pub bom: bool,
}

/// Parse one message strictly (RFC 5424 §6).
pub fn parse_rfc5424(s: &str) -> Result<SyslogMessage, String> {
    let b = s.as_bytes();
    if b.first() != Some(&b'<') {
        return Err("PRI must start with '<'".into());
    }
    let close = s.find('>').ok_or("PRI has no '>'")?;
    let pri_s = &s[1..close];
    if pri_s.is_empty() || pri_s.len() > 3 || !pri_s.bytes().all(|c| c.is_ascii_digit()) {
        return Err(format!("PRI {pri_s:?} is not 1-3 digits"));
    }
    if pri_s.len() > 1 && pri_s.starts_with('0') {
        return Err(format!("PRI {pri_s:?} has a leading zero"));
    }
    let pri: u16 = pri_s.parse().map_err(|_| "PRI")?;
    if pri > 191 {
        return Err(format!("PRI {pri} > 191"));
    }
    let rest = &s[close + 1..];
    let (version_s, rest) = rest.split_once(' ').ok_or("no SP after VERSION")?;
    if version_s.is_empty()
        || version_s.len() > 3
        || version_s.starts_with('0')
        || !version_s.bytes().all(|c| c.is_ascii_digit())
    {
        return Err(format!("VERSION {version_s:?}"));
    }
    let mut fields = Vec::new();
    let mut rest = rest;
    for (name, max) in [("TIMESTAMP", 64), ("HOSTNAME", 255), ("APP-NAME", 48), ("PROCID", 128), ("MSGID", 32)] {
        let (f, r) = rest.split_once(' ').ok_or(format!("no SP after {name}"))?;
        if f.is_empty() || f.len() > max || !f.bytes().all(|c| (33..=126).contains(&c)) {
            return Err(format!("{name} {f:?} is not 1..={max} PRINTUSASCII"));
        }
        fields.push(if f == "-" { None } else { Some(f.to_string()) });
        rest = r;
    }
    if let Some(ts) = &fields[0] {
        check_timestamp(ts)?;
    }
    let (sd, rest) = parse_sd(rest)?;
    let (msg, bom) = match rest {
        "" => (None, false),
        r => {
            let r = r.strip_prefix(' ').ok_or("no SP between STRUCTURED-DATA and MSG")?;
            match r.strip_prefix('\u{feff}') {
                Some(m) => (Some(m.to_string()), true),
                None => (Some(r.to_string()), false),
            }
        }
    };
    let mut it = fields.into_iter();
    Ok(SyslogMessage {
        facility: (pri / 8) as u8,
        severity: (pri % 8) as u8,
        version: version_s.parse().map_err(|_| "VERSION")?,
        timestamp: it.next().flatten(),
        hostname: it.next().flatten(),
        app_name: it.next().flatten(),
        procid: it.next().flatten(),
        msgid: it.next().flatten(),
        sd,
        msg,
        bom,
    })
}

fn check_timestamp(ts: &str) -> Result<(), String> {
    let bad = || format!("TIMESTAMP {ts:?} is not RFC 3339 as RFC 5424 §6.2.3 allows");
    let b = ts.as_bytes();
    let digits = |r: std::ops::Range<usize>| b.get(r.clone()).is_some_and(|s| s.iter().all(u8::is_ascii_digit));
    if b.len() < 20
        || !digits(0..4)
        || b[4] != b'-'
        || !digits(5..7)
        || b[7] != b'-'
        || !digits(8..10)
        || b[10] != b'T'
        || !digits(11..13)
        || b[13] != b':'
        || !digits(14..16)
        || b[16] != b':'
        || !digits(17..19)
    {
        return Err(bad());
    }
    let mut i = 19;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start || i - start > 6 {
            return Err(bad());
        }
    }
    match &ts[i..] {
        "Z" => Ok(()),
        off if off.len() == 6
            && (off.starts_with('+') || off.starts_with('-'))
            && off.as_bytes()[3] == b':'
            && off[1..3].bytes().all(|c| c.is_ascii_digit())
            && off[4..6].bytes().all(|c| c.is_ascii_digit()) =>
        {
            Ok(())
        }
        _ => Err(bad()),
    }
}

fn is_sd_name_char(c: char) -> bool {
    ('!'..='~').contains(&c) && !matches!(c, '=' | ' ' | ']' | '"')
}

fn parse_sd(s: &str) -> Result<(Vec<SdElement>, &str), String> {
    if let Some(rest) = s.strip_prefix('-') {
        return Ok((Vec::new(), rest));
    }
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(r) = rest.strip_prefix('[') {
        let end = r.find(|c: char| !is_sd_name_char(c)).ok_or("SD-ELEMENT not closed")?;
        let id = &r[..end];
        if id.is_empty() || id.len() > 32 {
            return Err(format!("SD-ID {id:?} is not 1..=32 SD-NAME chars"));
        }
        let mut r = &r[end..];
        let mut params = Vec::new();
        loop {
            if let Some(after) = r.strip_prefix(']') {
                r = after;
                break;
            }
            r = r.strip_prefix(' ').ok_or(format!("expected SP or ']' in [{id}"))?;
            let end = r.find(|c: char| !is_sd_name_char(c)).ok_or("PARAM-NAME not closed")?;
            let name = &r[..end];
            if name.is_empty() || name.len() > 32 {
                return Err(format!("PARAM-NAME {name:?} is not 1..=32 SD-NAME chars"));
            }
            r = r[end..].strip_prefix("=\"").ok_or(format!("PARAM {name}: expected =\""))?;
            let mut value = String::new();
            let mut chars = r.char_indices();
            let close = loop {
                let (i, c) = chars.next().ok_or(format!("PARAM-VALUE of {name} not closed"))?;
                match c {
                    '"' => break i,
                    ']' => return Err(format!("PARAM-VALUE of {name} has an unescaped ']'")),
                    '\\' => match chars.next() {
                        Some((_, e @ ('"' | '\\' | ']'))) => value.push(e),
                        Some((_, e)) => {
                            value.push('\\');
                            value.push(e);
                        }
                        None => return Err(format!("PARAM-VALUE of {name} ends in '\\'")),
                    },
                    c => value.push(c),
                }
            };
            params.push((name.to_string(), value));
            r = &r[close + 1..];
        }
        out.push(SdElement { id: id.to_string(), params });
        rest = r;
    }
    if out.is_empty() {
        return Err("STRUCTURED-DATA must be '-' or start with '['".into());
    }
    Ok((out, rest))
}

// === SyslogCollector ===

/// What a collector has read.
#[derive(Debug, Default)]
struct Received {
    frames: Vec<String>,
    framing_errors: Vec<String>,
    connections: u64,
}

/// A syslog collector on 127.0.0.1 reading octet-counted frames, over plain
/// TCP or TLS. Stop it with [`SyslogCollector::stop`]; start a new one on
/// the same address to model a collector that comes back.
pub struct SyslogCollector {
    pub addr: SocketAddr,
    received: Arc<Mutex<Received>>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl std::fmt::Debug for SyslogCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyslogCollector").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl SyslogCollector {
    /// Plain TCP (RFC 6587) on `addr` (`127.0.0.1:0` for any port).
    pub async fn tcp(addr: &str) -> Self {
        Self::start(addr, None).await
    }

    /// TLS (RFC 5425) with a certificate for `localhost` and 127.0.0.1 from `ca`.
    pub async fn tls(addr: &str, ca: &TestCa) -> Self {
        let (chain, key) = ca.issue(&["localhost", "127.0.0.1"]);
        let cfg = rustls::ServerConfig::builder_with_provider(crate::crypto_provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("collector certificate");
        Self::start(addr, Some(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))).await
    }

    async fn start(addr: &str, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap_or_else(|e| panic!("bind collector {addr}: {e}"));
        let addr = listener.local_addr().expect("collector address");
        let received = Arc::new(Mutex::new(Received::default()));
        let tasks: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (r, t) = (received.clone(), tasks.clone());
        let accept = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                r.lock().unwrap().connections += 1;
                let r = r.clone();
                let tls = tls.clone();
                let h = tokio::spawn(async move {
                    match tls {
                        None => read_frames(sock, &r).await,
                        Some(acceptor) => match acceptor.accept(sock).await {
                            Ok(s) => read_frames(s, &r).await,
                            Err(e) => r.lock().unwrap().framing_errors.push(format!("TLS handshake: {e}")),
                        },
                    }
                });
                t.lock().unwrap().push(h);
            }
        });
        tasks.lock().unwrap().push(accept);
        Self { addr, received, tasks }
    }

    /// Every frame read so far (the syslog messages, without the length).
    pub fn frames(&self) -> Vec<String> {
        self.received.lock().unwrap().frames.clone()
    }

    pub fn framing_errors(&self) -> Vec<String> {
        self.received.lock().unwrap().framing_errors.clone()
    }

    pub fn connections(&self) -> u64 {
        self.received.lock().unwrap().connections
    }

    /// Wait until at least `n` frames arrived; panics after `limit`.
    pub async fn wait_for(&self, n: usize, limit: std::time::Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let frames = self.frames();
            if frames.len() >= n {
                return frames;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "collector got {} of {n} frames; framing errors: {:?}",
                    frames.len(),
                    self.framing_errors()
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Stop listening and drop every connection (the port is free again).
    pub async fn stop(self) {
        let tasks: Vec<_> = self.tasks.lock().unwrap().drain(..).collect();
        for t in tasks {
            t.abort();
            let _ = t.await;
        }
    }
}

async fn read_frames(mut s: impl AsyncRead + Unpin, r: &Mutex<Received>) {
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match s.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                if !buf.is_empty() {
                    r.lock().unwrap().framing_errors.push(format!("{} bytes of a partial frame at close", buf.len()));
                }
                return;
            }
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut start = 0;
        loop {
            let Some(sp) = buf[start..].iter().position(|&c| c == b' ') else {
                if buf.len() - start > 10 {
                    r.lock().unwrap().framing_errors.push("MSG-LEN longer than 10 digits".into());
                    return;
                }
                break;
            };
            let len_s = &buf[start..start + sp];
            let valid = !len_s.is_empty() && len_s[0] != b'0' && len_s.len() <= 10 && len_s.iter().all(u8::is_ascii_digit);
            if !valid {
                let shown = String::from_utf8_lossy(&len_s[..len_s.len().min(20)]).to_string();
                r.lock().unwrap().framing_errors.push(format!("bad MSG-LEN {shown:?}"));
                return;
            }
            let len: usize = std::str::from_utf8(len_s).unwrap().parse().unwrap();
            let body = start + sp + 1;
            if buf.len() < body + len {
                break;
            }
            match std::str::from_utf8(&buf[body..body + len]) {
                Ok(m) => r.lock().unwrap().frames.push(m.to_string()),
                Err(e) => r.lock().unwrap().framing_errors.push(format!("frame is not UTF-8: {e}")),
            }
            start = body + len;
        }
        buf.drain(..start);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_message_and_unescapes_values() {
        let m = parse_rfc5424(
            "<108>1 2026-01-02T03:04:05.678Z host palisade - interaction [palisade@32473 a=\"x\\\"y\\]z\\\\\" b=\"2\"] \u{feff}{}",
        )
        .unwrap();
        assert_eq!((m.facility, m.severity), (13, 4));
        assert_eq!(m.sd[0].param("a"), Some("x\"y]z\\"));
        assert_eq!(m.msg.as_deref(), Some("{}"));
        assert!(m.bom);
        assert_eq!(m.procid, None);
    }

    #[test]
    fn refuses_what_the_abnf_refuses() {
        for bad in [
            "<192>1 - - - - - -",
            "<13>01 - - - - - -",
            "<13>1 2026-01-02 - - - - -",
            "<13>1 - - - - - [id a=\"]\"]",
            "<13>1 - - - - - [id a=b]",
            "<13>1 - - - - - x",
            "<13>1 - - - - -- msg",
            "<13>1 2026-01-02T03:04:05.1234567Z - - - - -",
        ] {
            assert!(parse_rfc5424(bad).is_err(), "{bad}");
        }
        assert!(parse_rfc5424("<13>1 - - - - - -").is_ok());
    }
}
