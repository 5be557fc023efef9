//! Exact socket lookup through netlink `NETLINK_SOCK_DIAG` (what `ss` uses):
//! one request naming the 4-tuple, one reply with the socket's uid and inode.
//!
//! Reading `/proc/net/tcp` makes the kernel walk its whole connection hash
//! table (milliseconds per read on a busy host); this asks for one socket.
//! It only queries; it must never hold the netlink socket open across
//! lookups or block waiting for a reply (the kernel answers synchronously).

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_HDR_LEN: usize = 16;
const INET_DIAG_REQ_V2_LEN: usize = 56;
const INET_DIAG_MSG_LEN: usize = 72;
const INET_DIAG_NOCOOKIE: u32 = !0;
const IPPROTO_TCP: u8 = 6;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// What the kernel knows about one socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DiagEntry {
    /// Ports of the socket the kernel returned (host order).
    pub sport: u16,
    pub dport: u16,
    pub uid: u32,
    pub inode: u64,
}

/// Why a lookup gave no answer.
#[derive(Debug)]
pub(crate) enum DiagError {
    /// The kernel has no such socket.
    NotFound,
    /// Netlink is unavailable or answered something unexpected; fall back to procfs.
    Unavailable(String),
}

/// Ask the kernel for the TCP socket whose local end is `src` and remote end
/// is `dst` (both already canonical: IPv4-mapped addresses as IPv4).
pub(crate) fn lookup(src: SocketAddr, dst: SocketAddr) -> Result<DiagEntry, DiagError> {
    let request = encode_request(src, dst)
        .ok_or_else(|| DiagError::Unavailable("mixed address families".into()))?;
    let mut sock =
        open_socket().map_err(|e| DiagError::Unavailable(format!("netlink socket: {e}")))?;
    sock.write_all(&request)
        .map_err(|e| DiagError::Unavailable(format!("netlink send: {e}")))?;
    let mut buf = [0u8; 1024];
    let n = sock
        .read(&mut buf)
        .map_err(|e| DiagError::Unavailable(format!("netlink receive: {e}")))?;
    let entry = decode_reply(&buf[..n])?;
    // For a tuple with no connected socket the kernel falls back to a
    // listener on the same local port; that is not the connection asked for.
    if (entry.sport, entry.dport) != (src.port(), dst.port()) {
        return Err(DiagError::NotFound);
    }
    Ok(entry)
}

/// A `NETLINK_SOCK_DIAG` datagram socket, close-on-exec and non-blocking.
#[allow(unsafe_code)]
fn open_socket() -> std::io::Result<std::fs::File> {
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: socket(2) takes plain integers and returns a new descriptor or -1.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2), is valid and owned by nobody else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok(std::fs::File::from(owned))
}

/// `nlmsghdr` + `inet_diag_req_v2` for an exact (non-dump) lookup.
pub(crate) fn encode_request(src: SocketAddr, dst: SocketAddr) -> Option<Vec<u8>> {
    let (family, src_ip, dst_ip) = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut a = [0u8; 16];
            let mut b = [0u8; 16];
            a[..4].copy_from_slice(&s.octets());
            b[..4].copy_from_slice(&d.octets());
            (AF_INET, a, b)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => (AF_INET6, s.octets(), d.octets()),
        _ => return None,
    };
    let total = NLMSG_HDR_LEN + INET_DIAG_REQ_V2_LEN;
    let mut m = Vec::with_capacity(total);
    m.extend_from_slice(&(total as u32).to_ne_bytes());
    m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    m.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    m.extend_from_slice(&[family, IPPROTO_TCP, 0, 0]);
    m.extend_from_slice(&u32::MAX.to_ne_bytes()); // every TCP state
    m.extend_from_slice(&src.port().to_be_bytes());
    m.extend_from_slice(&dst.port().to_be_bytes());
    m.extend_from_slice(&src_ip);
    m.extend_from_slice(&dst_ip);
    m.extend_from_slice(&0u32.to_ne_bytes()); // any interface
    m.extend_from_slice(&INET_DIAG_NOCOOKIE.to_ne_bytes());
    m.extend_from_slice(&INET_DIAG_NOCOOKIE.to_ne_bytes());
    debug_assert_eq!(m.len(), total);
    Some(m)
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
}

/// Decode the kernel's answer: an `inet_diag_msg` or an `NLMSG_ERROR`.
pub(crate) fn decode_reply(b: &[u8]) -> Result<DiagEntry, DiagError> {
    let bad = |why: &str| DiagError::Unavailable(format!("unexpected sock_diag reply: {why}"));
    let len = u32_at(b, 0).ok_or_else(|| bad("short header"))? as usize;
    let kind = b
        .get(4..6)
        .map(|s| u16::from_ne_bytes([s[0], s[1]]))
        .ok_or_else(|| bad("short header"))?;
    if len > b.len() || len < NLMSG_HDR_LEN {
        return Err(bad("length out of range"));
    }
    let payload = &b[NLMSG_HDR_LEN..len];
    match kind {
        NLMSG_ERROR => {
            let errno = u32_at(payload, 0).ok_or_else(|| bad("short error"))? as i32;
            if errno == -libc::ENOENT {
                Err(DiagError::NotFound)
            } else {
                Err(DiagError::Unavailable(format!(
                    "sock_diag error {}",
                    std::io::Error::from_raw_os_error(-errno)
                )))
            }
        }
        SOCK_DIAG_BY_FAMILY if payload.len() >= INET_DIAG_MSG_LEN => Ok(DiagEntry {
            sport: u16::from_be_bytes([payload[4], payload[5]]),
            dport: u16::from_be_bytes([payload[6], payload[7]]),
            uid: u32_at(payload, 64).ok_or_else(|| bad("short message"))?,
            inode: u64::from(u32_at(payload, 68).ok_or_else(|| bad("short message"))?),
        }),
        other => Err(bad(&format!(
            "message type {other}, {} bytes",
            payload.len()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_layout_matches_the_kernel_abi() {
        let m = encode_request(
            "127.0.0.1:50000".parse().unwrap(),
            "127.0.0.1:8080".parse().unwrap(),
        )
        .unwrap();
        assert_eq!(m.len(), 72);
        assert_eq!(u32_at(&m, 0), Some(72));
        assert_eq!(m[16], AF_INET);
        assert_eq!(m[17], IPPROTO_TCP);
        assert_eq!(&m[24..26], &50000u16.to_be_bytes());
        assert_eq!(&m[26..28], &8080u16.to_be_bytes());
        assert_eq!(&m[28..32], &[127, 0, 0, 1]);
        assert_eq!(&m[44..48], &[127, 0, 0, 1]);
        let v6 = encode_request("[::1]:1".parse().unwrap(), "[::1]:2".parse().unwrap()).unwrap();
        assert_eq!(v6[16], AF_INET6);
        assert_eq!(v6[43], 1);
        assert!(
            encode_request("127.0.0.1:1".parse().unwrap(), "[::1]:2".parse().unwrap()).is_none()
        );
    }

    #[test]
    fn replies_decode_or_say_why_not() {
        let mut err = vec![0u8; 36];
        err[..4].copy_from_slice(&36u32.to_ne_bytes());
        err[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        err[16..20].copy_from_slice(&(-libc::ENOENT).to_ne_bytes());
        assert!(matches!(decode_reply(&err), Err(DiagError::NotFound)));
        err[16..20].copy_from_slice(&(-libc::EPERM).to_ne_bytes());
        assert!(matches!(decode_reply(&err), Err(DiagError::Unavailable(_))));

        let mut msg = vec![0u8; 16 + 72];
        msg[..4].copy_from_slice(&88u32.to_ne_bytes());
        msg[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        msg[16 + 4..16 + 6].copy_from_slice(&50000u16.to_be_bytes());
        msg[16 + 6..16 + 8].copy_from_slice(&8080u16.to_be_bytes());
        msg[16 + 64..16 + 68].copy_from_slice(&1000u32.to_ne_bytes());
        msg[16 + 68..16 + 72].copy_from_slice(&424242u32.to_ne_bytes());
        let e = decode_reply(&msg).ok().unwrap();
        assert_eq!(
            e,
            DiagEntry {
                sport: 50000,
                dport: 8080,
                uid: 1000,
                inode: 424242
            }
        );

        for junk in [&[][..], &[1, 2, 3][..], &msg[..40], &[255u8; 20][..]] {
            assert!(
                matches!(decode_reply(junk), Err(DiagError::Unavailable(_))),
                "{junk:?}"
            );
        }
    }

    #[test]
    fn finds_a_real_loopback_socket_and_its_inode() {
        use std::os::fd::AsRawFd;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server_side, peer) = listener.accept().unwrap();
        let local = server_side.local_addr().unwrap();
        let link = std::fs::read_link(format!("/proc/self/fd/{}", client.as_raw_fd())).unwrap();
        let e = match lookup(peer, local) {
            Ok(e) => e,
            Err(DiagError::Unavailable(why)) => {
                eprintln!("sock_diag unavailable here ({why}); procfs fallback covers attribution");
                return;
            }
            Err(DiagError::NotFound) => panic!("live socket {peer} -> {local} not found"),
        };
        assert_eq!(link.to_str().unwrap(), format!("socket:[{}]", e.inode));
        // No connection from the listener's port to port 1: the kernel would
        // fall back to the listener itself, which must not count.
        assert!(matches!(
            lookup(local, "127.0.0.1:1".parse().unwrap()),
            Err(DiagError::NotFound)
        ));
        assert!(matches!(
            lookup("127.0.0.1:1".parse().unwrap(), local),
            Err(DiagError::NotFound)
        ));
    }
}
