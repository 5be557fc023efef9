//! Measures what a first connection to a new intercepted host pays for its
//! leaf certificate, and what a cached lookup costs. Prints figures; asserts
//! nothing. Run: `cargo run -p palisade-tls --example mint_cost [--release]`.

use palisade_tls::{DeviceCa, KeyStore, LeafCache};
use std::sync::Arc;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let store = KeyStore::open_file(&tmp.path().join("keys"))?;
    let t = Instant::now();
    let ca = Arc::new(DeviceCa::load_or_create(
        &store,
        &tmp.path().join("certs"),
        "bench",
    )?);
    println!("create device CA: {:?}", t.elapsed());
    let t = Instant::now();
    DeviceCa::load_or_create(&store, &tmp.path().join("certs"), "bench")?;
    println!("reload device CA: {:?}", t.elapsed());

    const N: usize = 500;
    let cache = LeafCache::new(ca, N);
    let t = Instant::now();
    for i in 0..N {
        cache.get(&format!("host{i}.example.com"))?;
    }
    let mint = t.elapsed() / N as u32;
    let t = Instant::now();
    const M: usize = 200_000;
    for i in 0..M {
        cache.get(&format!("host{}.example.com", i % N))?;
    }
    let hit = t.elapsed() / M as u32;
    println!("mint leaf (miss): {mint:?} each over {N}; cached get (hit): {hit:?} each over {M}");
    Ok(())
}
