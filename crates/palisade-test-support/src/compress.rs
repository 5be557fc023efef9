//! Streaming response compression for the fake provider: each chunk is
//! compressed and flushed on its own so compressed streams still arrive
//! chunk by chunk.
//!
//! Test-only; never used on anything but the fake's own bodies.

use std::io::Write;

pub(crate) enum Compressor {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Br(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl Compressor {
    /// `gzip`, `br` or `zstd`; anything else is no compression.
    pub(crate) fn new(encoding: &str) -> Option<Self> {
        Some(match encoding {
            "gzip" => Compressor::Gzip(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast())),
            "br" => Compressor::Br(Box::new(brotli::CompressorWriter::new(Vec::new(), 4096, 4, 22))),
            "zstd" => Compressor::Zstd(zstd::stream::write::Encoder::new(Vec::new(), 3).expect("zstd encoder")),
            _ => return None,
        })
    }

    pub(crate) fn name(&self) -> &'static str {
        match self {
            Compressor::Gzip(_) => "gzip",
            Compressor::Br(_) => "br",
            Compressor::Zstd(_) => "zstd",
        }
    }

    /// Compress and flush one chunk; returns the bytes to send now.
    pub(crate) fn chunk(&mut self, data: &[u8]) -> Vec<u8> {
        let out = match self {
            Compressor::Gzip(e) => {
                e.write_all(data).and_then(|_| e.flush()).expect("gzip to memory");
                e.get_mut()
            }
            Compressor::Br(e) => {
                e.write_all(data).and_then(|_| e.flush()).expect("br to memory");
                e.get_mut()
            }
            Compressor::Zstd(e) => {
                e.write_all(data).and_then(|_| e.flush()).expect("zstd to memory");
                e.get_mut()
            }
        };
        std::mem::take(out)
    }

    /// The stream's trailer.
    pub(crate) fn finish(self) -> Vec<u8> {
        match self {
            Compressor::Gzip(e) => e.finish().expect("gzip finish"),
            Compressor::Br(e) => e.into_inner(),
            Compressor::Zstd(e) => e.finish().expect("zstd finish"),
        }
    }
}
