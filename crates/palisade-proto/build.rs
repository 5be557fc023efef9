//! Compiles proto/palisade/v1/*.proto with protox (pure Rust, no system
//! `protoc`) and generates prost messages plus tonic clients and servers.

use std::path::PathBuf;

const FILES: &[&str] = &[
    "palisade/v1/enroll.proto",
    "palisade/v1/policy.proto",
    "palisade/v1/audit.proto",
    "palisade/v1/inventory.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    for f in FILES {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    let fds = protox::compile(FILES, [&root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // EnrollRequest carries the enrollment token: Debug is hand-written in lib.rs.
        .skip_debug(["palisade.v1.EnrollRequest"])
        .compile_fds(fds)?;
    Ok(())
}
