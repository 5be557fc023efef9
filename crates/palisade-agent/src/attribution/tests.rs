//! Attribution tests: procfs parsing on fixture text, lookups against a
//! fixture tree, and a real loopback connection made by this test process.

use super::procnet::{parse_addr, parse_line, parse_table};
use super::*;
use std::net::{TcpListener, TcpStream};
use std::path::Path;

const TCP_FIXTURE: &str = "\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1111 1 0000000000000000 100 0 0 10 0
   1: 0100007F:C350 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 5555 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 6666 1 0000000000000000 20 4 30 10 -1
   3: 0100007F:C351 0100007F:1F90 06 00000000:00000000 03:00000F4B 00000000     0        0 0 3 0000000000000000
";

const TCP6_FIXTURE: &str = "\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1F91 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2222 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:D431 00000000000000000000000001000000:1F91 01 00000000:00000000 00:00000000 00000000  1000        0 7777 1 0000000000000000 20 4 30 10 -1
   2: 0000000000000000FFFF00000100007F:D432 0000000000000000FFFF00000100007F:1F92 01 00000000:00000000 00:00000000 00000000  1000        0 8888 1 0000000000000000 20 4 30 10 -1
   3: B80D01200000000000000000AB000000:01BB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3333 1 0000000000000000 100 0 0 10 0
";

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[cfg(target_endian = "little")]
#[test]
fn parses_ipv4_table() {
    let rows = parse_table(Path::new("tcp"), TCP_FIXTURE).unwrap();
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[0].local, sa("127.0.0.1:8080"));
    assert_eq!(rows[0].remote, sa("0.0.0.0:0"));
    assert_eq!(
        (rows[1].local, rows[1].remote),
        (sa("127.0.0.1:50000"), sa("127.0.0.1:8080"))
    );
    assert_eq!((rows[1].uid, rows[1].inode), (1000, 5555));
    assert_eq!(rows[3].inode, 0, "TIME_WAIT rows have no inode");
}

#[cfg(target_endian = "little")]
#[test]
fn parses_ipv6_table_including_mapped_addresses() {
    let rows = parse_table(Path::new("tcp6"), TCP6_FIXTURE).unwrap();
    assert_eq!(rows[0].local, sa("[::1]:8081"));
    assert_eq!(
        (rows[1].local, rows[1].remote),
        (sa("[::1]:54321"), sa("[::1]:8081"))
    );
    assert_eq!(rows[2].local, sa("[::ffff:127.0.0.1]:54322"));
    assert_eq!(rows[3].local, sa("[2001:db8::ab]:443"));
}

#[test]
fn bad_rows_get_clear_errors() {
    assert!(parse_line("0: 0100007F:1F90")
        .unwrap_err()
        .contains("at least 10 fields"));
    let bad_uid = "0: 0100007F:1F90 00000000:0000 0A 0:0 00:0 0 alice 0 1";
    assert!(parse_line(bad_uid).unwrap_err().contains("bad uid"));
    let bad_inode = "0: 0100007F:1F90 00000000:0000 0A 0:0 00:0 0 0 0 x";
    assert!(parse_line(bad_inode).unwrap_err().contains("bad inode"));
    assert!(parse_addr("0100007F").unwrap_err().contains("no ':'"));
    assert!(parse_addr("0100007F:XYZW")
        .unwrap_err()
        .contains("bad port"));
    assert!(parse_addr("0100007G:0050")
        .unwrap_err()
        .contains("bad address"));
    assert!(parse_addr("01007F:0050")
        .unwrap_err()
        .contains("6 hex digits"));
    assert!(
        parse_addr("ééééé\u{e9}:0050").is_err(),
        "non-ASCII must not panic"
    );
    assert!(parse_addr("0000000000000000000000000100000é:0050").is_err());

    let e = parse_table(Path::new("/proc/net/tcp"), "header\n 0: garbage\n").unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("/proc/net/tcp line 2"), "{msg}");
}

/// A procfs tree under a temp dir: net tables plus pid directories whose
/// `fd` entries are symlinks to `socket:[inode]`.
#[cfg(unix)]
struct FakeProc {
    dir: tempfile::TempDir,
}

#[cfg(unix)]
impl FakeProc {
    fn new(tcp: &str, tcp6: Option<&str>) -> Self {
        let dir = tempfile::TempDir::new().unwrap();
        std::fs::create_dir_all(dir.path().join("net")).unwrap();
        std::fs::write(dir.path().join("net/tcp"), tcp).unwrap();
        if let Some(t6) = tcp6 {
            std::fs::write(dir.path().join("net/tcp6"), t6).unwrap();
        }
        std::fs::create_dir_all(dir.path().join("self")).unwrap(); // non-numeric entries are ignored
        Self { dir }
    }

    fn process(&self, pid: u32, comm: &str, exe: &str, fds: &[&str]) {
        let p = self.dir.path().join(pid.to_string());
        std::fs::create_dir_all(p.join("fd")).unwrap();
        std::fs::write(p.join("comm"), format!("{comm}\n")).unwrap();
        std::os::unix::fs::symlink(exe, p.join("exe")).unwrap();
        for (i, target) in fds.iter().enumerate() {
            std::os::unix::fs::symlink(target, p.join("fd").join(i.to_string())).unwrap();
        }
    }

    fn attributor(&self) -> ProcNetAttributor {
        ProcNetAttributor::with_root(self.dir.path())
    }
}

#[cfg(all(unix, target_endian = "little"))]
#[test]
fn finds_the_process_holding_the_client_socket_in_a_fixture() {
    let fake = FakeProc::new(TCP_FIXTURE, Some(TCP6_FIXTURE));
    fake.process(
        10,
        "proxy",
        "/usr/bin/palisade-agent",
        &["socket:[6666]", "socket:[1111]"],
    );
    fake.process(
        20,
        "curl",
        "/usr/bin/curl (deleted)",
        &["/dev/null", "pipe:[9]", "socket:[5555]"],
    );
    fake.process(
        30,
        "codex",
        "/opt/codex/bin/codex",
        &["socket:[7777]", "socket:[8888]"],
    );
    let a = fake.attributor();

    // The client's socket (pid 20), not its mirror image, the proxy's
    // accepted socket (pid 10).
    let p = a
        .lookup(sa("127.0.0.1:50000"), sa("127.0.0.1:8080"))
        .unwrap();
    assert_eq!((p.pid, p.name.as_str()), (20, "curl"));
    assert_eq!(p.exe.as_deref(), Some(Path::new("/usr/bin/curl")));
    assert_eq!(p.uid, Some(1000));

    let p = a.lookup(sa("[::1]:54321"), sa("[::1]:8081")).unwrap();
    assert_eq!(p.pid, 30);

    // The proxy sees an IPv4 client of a dual-stack listener as mapped IPv6,
    // and a mapped row in tcp6 matches a plain IPv4 address.
    let p = a
        .lookup(
            sa("[::ffff:127.0.0.1]:50000"),
            sa("[::ffff:127.0.0.1]:8080"),
        )
        .unwrap();
    assert_eq!(p.pid, 20);
    let p = a
        .lookup(sa("127.0.0.1:54322"), sa("127.0.0.1:8082"))
        .unwrap();
    assert_eq!(p.pid, 30);
}

#[cfg(all(unix, target_endian = "little"))]
#[test]
fn a_recently_matched_pid_that_no_longer_holds_the_socket_is_not_reported() {
    let fake = FakeProc::new(TCP_FIXTURE, None);
    fake.process(20, "curl", "/usr/bin/curl", &["socket:[5555]"]);
    fake.process(21, "other", "/usr/bin/other", &[]);
    let a = fake.attributor();
    assert_eq!(
        a.lookup(sa("127.0.0.1:50000"), sa("127.0.0.1:8080"))
            .unwrap()
            .pid,
        20
    );
    // The socket moves to another process (fd passing, or pid 20 exited and
    // the inode now belongs to 21): the cached pid must be re-checked.
    std::fs::remove_file(fake.dir.path().join("20/fd/0")).unwrap();
    std::os::unix::fs::symlink("socket:[5555]", fake.dir.path().join("21/fd/0")).unwrap();
    assert_eq!(
        a.lookup(sa("127.0.0.1:50000"), sa("127.0.0.1:8080"))
            .unwrap()
            .pid,
        21
    );
    std::fs::remove_file(fake.dir.path().join("21/fd/0")).unwrap();
    let e = a
        .lookup(sa("127.0.0.1:50000"), sa("127.0.0.1:8080"))
        .unwrap_err();
    assert!(
        matches!(e, AttributionError::OwnerNotFound { inode: 5555, .. }),
        "{e}"
    );
}

#[cfg(all(unix, target_endian = "little"))]
#[test]
fn lookup_failures_say_why() {
    let fake = FakeProc::new(TCP_FIXTURE, None);
    fake.process(10, "proxy", "/usr/bin/palisade-agent", &["socket:[6666]"]);
    let a = fake.attributor();

    // No such client port.
    let e = a
        .lookup(sa("127.0.0.1:50002"), sa("127.0.0.1:8080"))
        .unwrap_err();
    assert!(matches!(e, AttributionError::SocketNotFound { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("no TCP socket from 127.0.0.1:50002 to 127.0.0.1:8080"),
        "{e}"
    );

    // Right addresses, wrong port.
    let e = a
        .lookup(sa("127.0.0.1:50000"), sa("127.0.0.1:8081"))
        .unwrap_err();
    assert!(matches!(e, AttributionError::SocketNotFound { .. }), "{e}");

    // Socket found, but no visible process holds inode 5555.
    let e = a
        .lookup(sa("127.0.0.1:50000"), sa("127.0.0.1:8080"))
        .unwrap_err();
    assert!(
        matches!(e, AttributionError::OwnerNotFound { inode: 5555, .. }),
        "{e}"
    );

    // TIME_WAIT row: inode 0, nobody owns it.
    let e = a
        .lookup(sa("127.0.0.1:50001"), sa("127.0.0.1:8080"))
        .unwrap_err();
    assert!(
        matches!(e, AttributionError::OwnerNotFound { inode: 0, .. }),
        "{e}"
    );
}

#[cfg(unix)]
#[test]
fn missing_or_corrupt_tables_are_errors_not_panics() {
    let empty = tempfile::TempDir::new().unwrap();
    let e = ProcNetAttributor::with_root(empty.path())
        .lookup(sa("127.0.0.1:1"), sa("127.0.0.1:2"))
        .unwrap_err();
    assert!(matches!(e, AttributionError::Io { .. }), "{e}");
    assert!(e.to_string().contains("net/tcp"), "{e}");

    let fake = FakeProc::new(
        "header\n 0: zz:zz 00000000:0000 0A 0:0 00:0 0 0 0 1\n",
        None,
    );
    let e = fake
        .attributor()
        .lookup(sa("127.0.0.1:1"), sa("127.0.0.1:2"))
        .unwrap_err();
    assert!(matches!(e, AttributionError::Parse { line: 2, .. }), "{e}");
}

#[test]
fn unsupported_platforms_say_so() {
    let a = UnsupportedAttributor::new("plan9");
    let r = a.lookup(sa("127.0.0.1:1"), sa("127.0.0.1:2"));
    let e = r.as_ref().unwrap_err();
    assert_eq!(
        e.to_string(),
        "process attribution is not implemented on plan9"
    );
    let app = app_ref(&r);
    assert_eq!((app.name, app.exe, app.pid), (None, None, None));
    assert_eq!(
        app.unknown_reason.as_deref(),
        Some("process attribution is not implemented on plan9")
    );
}

#[test]
fn app_ref_carries_the_process() {
    let info = ProcessInfo {
        pid: 7,
        name: "claude".into(),
        exe: Some("/usr/local/bin/claude".into()),
        uid: Some(1000),
        user: Some("alice".into()),
    };
    let app = app_ref(&Ok(info));
    assert_eq!(app.name.as_deref(), Some("claude"));
    assert_eq!(app.exe.as_deref(), Some("/usr/local/bin/claude"));
    assert_eq!(app.pid, Some(7));
    assert_eq!(app.unknown_reason, None);
}

/// Connect to a listener from this very process; the lookup must find us.
#[cfg(target_os = "linux")]
fn assert_attributes_self(listen: &str, connect_ip: &str) {
    let listener = TcpListener::bind(listen).unwrap();
    let port = listener.local_addr().unwrap().port();
    let _client = TcpStream::connect((connect_ip, port)).unwrap();
    let (server_side, peer) = listener.accept().unwrap();
    let local = server_side.local_addr().unwrap();

    let p = platform_attributor().lookup(peer, local).unwrap();
    assert_eq!(p.pid, std::process::id());
    assert_eq!(
        p.exe,
        Some(std::fs::canonicalize(std::env::current_exe().unwrap()).unwrap())
    );
    let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
    assert_eq!(p.name, comm.trim_end());
    assert_eq!(p.user, current_os_user());
}

#[cfg(target_os = "linux")]
#[test]
fn attributes_a_real_ipv4_loopback_connection_to_this_process() {
    assert_attributes_self("127.0.0.1:0", "127.0.0.1");
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn lookups_run_off_the_executor() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server_side, peer) = listener.accept().unwrap();
    let p = lookup_off_executor(
        platform_attributor(),
        peer,
        server_side.local_addr().unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(p.pid, std::process::id());
    let e = lookup_off_executor(Arc::new(UnsupportedAttributor::new("plan9")), peer, peer)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not implemented on plan9"), "{e}");
}

#[cfg(target_os = "linux")]
#[test]
fn the_procfs_path_alone_attributes_a_real_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server_side, peer) = listener.accept().unwrap();
    // with_root never uses netlink, so this exercises /proc/net/tcp parsing on the live kernel.
    let p = ProcNetAttributor::with_root("/proc")
        .lookup(peer, server_side.local_addr().unwrap())
        .unwrap();
    assert_eq!(p.pid, std::process::id());
}

#[cfg(target_os = "linux")]
#[test]
fn attributes_ipv4_clients_of_a_dual_stack_listener() {
    // Skips only where the kernel has IPv6 disabled entirely.
    if TcpListener::bind("[::]:0").is_err() {
        eprintln!("IPv6 unavailable; dual-stack attribution not exercised");
        return;
    }
    assert_attributes_self("[::]:0", "127.0.0.1");
    if TcpStream::connect(TcpListener::bind("[::1]:0").unwrap().local_addr().unwrap()).is_ok() {
        assert_attributes_self("[::1]:0", "::1");
    }
}

/// Not a test: prints what a lookup costs here. Run with
/// `cargo test -p palisade-agent --lib attribution::tests::measure -- --ignored --nocapture`.
#[cfg(target_os = "linux")]
#[test]
#[ignore = "measurement, prints timings"]
fn measure_lookup_cost() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let attributor = ProcNetAttributor::new();
    let procs = std::fs::read_dir("/proc")
        .unwrap()
        .filter(|e| {
            e.as_ref().is_ok_and(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.parse::<u32>().is_ok())
            })
        })
        .count();
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    for i in 0..200 {
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server_side, peer) = listener.accept().unwrap();
        let local = server_side.local_addr().unwrap();
        let fresh = ProcNetAttributor::new();
        let t = std::time::Instant::now();
        fresh.lookup(peer, local).unwrap();
        cold.push(t.elapsed());
        let t = std::time::Instant::now();
        attributor.lookup(peer, local).unwrap();
        if i > 0 {
            warm.push(t.elapsed());
        }
    }
    cold.sort();
    warm.sort();
    println!(
        "processes={procs} cold p50={:?} p99={:?} warm p50={:?} p99={:?}",
        cold[cold.len() / 2],
        cold[cold.len() * 99 / 100],
        warm[warm.len() / 2],
        warm[warm.len() * 99 / 100]
    );
}
