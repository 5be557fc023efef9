//! Incremental `Content-Encoding` decoder (gzip, deflate, br, zstd,
//! identity, and comma-separated chains of them) for the proxy's parsing
//! copy of a body.
//!
//! It only ever sees a COPY: the proxy forwards the original bytes
//! untouched. It must never let a small compressed body expand into
//! unbounded memory or CPU: total decoded output is capped by a limit, and
//! the decoder stops working the moment the limit is reached.

use std::io::{self, Write};

/// Default cap on decoded bytes per body (64 MiB).
pub const DEFAULT_DECODE_LIMIT: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("unsupported content-encoding {0:?}")]
    Unsupported(String),
    #[error("corrupt {encoding} body: {reason}")]
    Corrupt { encoding: &'static str, reason: String },
    #[error("decoder already finished")]
    Finished,
}

/// A sink that keeps at most `remaining` bytes and then refuses more, which
/// aborts the decoder mid-write instead of letting it expand a bomb.
struct Capped {
    out: Vec<u8>,
    remaining: usize,
    hit_limit: bool,
}

impl Write for Capped {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.remaining == 0 {
            self.hit_limit = true;
            return Err(io::Error::other("decoded size limit reached"));
        }
        let n = buf.len().min(self.remaining);
        self.out.extend_from_slice(&buf[..n]);
        self.remaining -= n;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

enum Stage {
    Gzip(Box<flate2::write::MultiGzDecoder<Capped>>),
    /// HTTP `deflate` is zlib-wrapped (RFC 1950), but some servers send raw
    /// deflate: the first two bytes decide.
    DeflateSniff(Vec<u8>, usize),
    Zlib(Box<flate2::write::ZlibDecoder<Capped>>),
    RawDeflate(Box<flate2::write::DeflateDecoder<Capped>>),
    Brotli(Box<brotli::DecompressorWriter<Capped>>),
    Zstd(Box<zstd::stream::write::Decoder<'static, Capped>>),
}

// === impl Stage ===

impl Stage {
    fn new(enc: &str, limit: usize) -> Result<Option<Stage>, DecodeError> {
        let sink = || Capped {
            out: Vec::new(),
            remaining: limit,
            hit_limit: false,
        };
        Ok(Some(match enc {
            "identity" | "" => return Ok(None),
            "gzip" | "x-gzip" => Stage::Gzip(Box::new(flate2::write::MultiGzDecoder::new(sink()))),
            "deflate" => Stage::DeflateSniff(Vec::new(), limit),
            "br" => Stage::Brotli(Box::new(brotli::DecompressorWriter::new(sink(), 4096))),
            "zstd" => {
                let d = zstd::stream::write::Decoder::new(sink()).map_err(|e| DecodeError::Corrupt {
                    encoding: "zstd",
                    reason: e.to_string(),
                })?;
                Stage::Zstd(Box::new(d))
            }
            other => return Err(DecodeError::Unsupported(other.to_string())),
        }))
    }

    fn name(&self) -> &'static str {
        match self {
            Stage::Gzip(_) => "gzip",
            Stage::DeflateSniff(..) | Stage::Zlib(_) | Stage::RawDeflate(_) => "deflate",
            Stage::Brotli(_) => "br",
            Stage::Zstd(_) => "zstd",
        }
    }

    fn sink(&mut self) -> Option<&mut Capped> {
        Some(match self {
            Stage::Gzip(d) => d.get_mut(),
            Stage::Zlib(d) => d.get_mut(),
            Stage::RawDeflate(d) => d.get_mut(),
            Stage::Brotli(d) => d.get_mut(),
            Stage::Zstd(d) => d.get_mut(),
            Stage::DeflateSniff(..) => return None,
        })
    }

    /// Write input; return newly decoded bytes and whether the limit was hit.
    fn write(&mut self, input: &[u8]) -> Result<(Vec<u8>, bool), DecodeError> {
        if let Stage::DeflateSniff(buf, limit) = self {
            buf.extend_from_slice(input);
            if buf.len() < 2 {
                return Ok((Vec::new(), false));
            }
            let sink = Capped {
                out: Vec::new(),
                remaining: *limit,
                hit_limit: false,
            };
            let is_zlib = buf[0] & 0x0f == 8 && (u16::from(buf[0]) << 8 | u16::from(buf[1])) % 31 == 0;
            let pending = std::mem::take(buf);
            *self = if is_zlib {
                Stage::Zlib(Box::new(flate2::write::ZlibDecoder::new(sink)))
            } else {
                Stage::RawDeflate(Box::new(flate2::write::DeflateDecoder::new(sink)))
            };
            return self.write(&pending);
        }
        let name = self.name();
        let res = match self {
            Stage::Gzip(d) => d.write_all(input),
            Stage::Zlib(d) => d.write_all(input),
            Stage::RawDeflate(d) => d.write_all(input),
            Stage::Brotli(d) => d.write_all(input),
            Stage::Zstd(d) => d.write_all(input),
            Stage::DeflateSniff(..) => Ok(()),
        };
        self.collect(name, res)
    }

    fn finish(&mut self) -> Result<(Vec<u8>, bool), DecodeError> {
        if let Stage::DeflateSniff(buf, _) = self {
            if buf.is_empty() {
                return Ok((Vec::new(), false));
            }
            return Err(DecodeError::Corrupt {
                encoding: "deflate",
                reason: "body ended after one byte".into(),
            });
        }
        let name = self.name();
        let res = match self {
            Stage::Gzip(d) => d.try_finish(),
            Stage::Zlib(d) => d.try_finish(),
            Stage::RawDeflate(d) => d.try_finish(),
            Stage::Brotli(d) => d.flush(),
            Stage::Zstd(d) => d.flush(),
            Stage::DeflateSniff(..) => Ok(()),
        };
        self.collect(name, res)
    }

    fn collect(&mut self, name: &'static str, res: io::Result<()>) -> Result<(Vec<u8>, bool), DecodeError> {
        let Some(sink) = self.sink() else {
            return Ok((Vec::new(), false));
        };
        let out = std::mem::take(&mut sink.out);
        let hit = sink.hit_limit;
        match res {
            Ok(()) => Ok((out, hit)),
            Err(_) if sink.hit_limit => Ok((out, true)),
            Err(e) => Err(DecodeError::Corrupt {
                encoding: name,
                reason: e.to_string(),
            }),
        }
    }
}

/// Incremental decoder for one body. See the module docs.
pub struct BodyDecoder {
    /// In decoding order (reverse of the header's listing order).
    stages: Vec<Stage>,
    truncated: bool,
    finished: bool,
    limit: usize,
    produced: usize,
}

// === impl BodyDecoder ===

impl BodyDecoder {
    /// A decoder for a `Content-Encoding` header value (case-insensitive;
    /// `None`, empty or `identity` pass through). Unknown encodings are an error.
    pub fn new(content_encoding: Option<&str>) -> Result<Self, DecodeError> {
        Self::new_with_limit(content_encoding, DEFAULT_DECODE_LIMIT)
    }

    /// As [`BodyDecoder::new`], keeping at most `limit` decoded bytes. Once
    /// reached, `feed` returns what fits, [`BodyDecoder::truncated`] turns
    /// true and later input is ignored.
    pub fn new_with_limit(content_encoding: Option<&str>, limit: usize) -> Result<Self, DecodeError> {
        let mut stages = Vec::new();
        if let Some(h) = content_encoding {
            for enc in h.split(',').map(|e| e.trim().to_ascii_lowercase()) {
                if let Some(s) = Stage::new(&enc, limit)? {
                    stages.push(s);
                }
            }
        }
        // Encodings are listed in the order they were applied; undo them in reverse.
        stages.reverse();
        Ok(Self {
            stages,
            truncated: false,
            finished: false,
            limit,
            produced: 0,
        })
    }

    /// Decode the next chunk of the encoded body (split anywhere).
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<u8>, DecodeError> {
        if self.finished {
            return Err(DecodeError::Finished);
        }
        self.run(chunk.to_vec(), false)
    }

    /// End of body: flush what the decoders still hold and check integrity
    /// where the format allows it. Calling it twice is an error.
    pub fn finish(&mut self) -> Result<Vec<u8>, DecodeError> {
        if self.finished {
            return Err(DecodeError::Finished);
        }
        self.finished = true;
        self.run(Vec::new(), true)
    }

    /// The decoded output hit the limit; what was returned is a prefix.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// Whether any decoding happens at all (false for identity).
    pub fn is_identity(&self) -> bool {
        self.stages.is_empty()
    }

    fn run(&mut self, mut data: Vec<u8>, finishing: bool) -> Result<Vec<u8>, DecodeError> {
        if self.truncated {
            return Ok(Vec::new());
        }
        for stage in &mut self.stages {
            let (mut out, hit) = stage.write(&data)?;
            if finishing {
                let (more, hit2) = stage.finish()?;
                out.extend_from_slice(&more);
                if hit2 {
                    self.truncated = true;
                }
            }
            if hit {
                self.truncated = true;
            }
            data = out;
        }
        // The last stage's sink caps output per stage; identity needs its own cap.
        let room = self.limit.saturating_sub(self.produced);
        if data.len() > room {
            data.truncate(room);
            self.truncated = true;
        }
        self.produced += data.len();
        Ok(data)
    }
}

impl std::fmt::Debug for BodyDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyDecoder")
            .field("stages", &self.stages.iter().map(Stage::name).collect::<Vec<_>>())
            .field("produced", &self.produced)
            .field("truncated", &self.truncated)
            .finish()
    }
}

#[cfg(test)]
mod tests;
