use super::*;
use std::io::Write;

fn sample() -> Vec<u8> {
    let mut v = Vec::new();
    for i in 0..5000 {
        v.extend_from_slice(format!("data: {{\"i\":{i},\"text\":\"héllo\"}}\n\n").as_bytes());
    }
    v
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}
fn zlib(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}
fn raw_deflate(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}
fn br(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
        w.write_all(data).unwrap();
    }
    out
}
fn zstd_enc(data: &[u8]) -> Vec<u8> {
    zstd::stream::encode_all(data, 3).unwrap()
}

fn decode_split(enc: &str, body: &[u8], piece: usize) -> (Vec<u8>, bool) {
    let mut d = BodyDecoder::new(Some(enc)).unwrap();
    let mut out = Vec::new();
    for c in body.chunks(piece.max(1)) {
        out.extend(d.feed(c).unwrap());
    }
    out.extend(d.finish().unwrap());
    (out, d.truncated())
}

#[test]
fn decodes_every_encoding_whole_and_split() {
    let data = sample();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("gzip", gzip(&data)),
        ("GZIP", gzip(&data)),
        ("x-gzip", gzip(&data)),
        ("deflate", zlib(&data)),
        ("deflate", raw_deflate(&data)),
        ("br", br(&data)),
        ("zstd", zstd_enc(&data)),
        ("identity", data.clone()),
        (" Br ", br(&data)),
    ];
    for (enc, body) in cases {
        for piece in [body.len(), 1, 7, 1000] {
            let (out, truncated) = decode_split(enc, &body, piece);
            assert_eq!(out, data, "{enc} piece {piece}");
            assert!(!truncated);
        }
    }
}

#[test]
fn none_and_empty_are_identity() {
    for h in [None, Some(""), Some("identity")] {
        let mut d = BodyDecoder::new(h).unwrap();
        assert!(d.is_identity());
        assert_eq!(d.feed(b"abc").unwrap(), b"abc");
        assert_eq!(d.finish().unwrap(), b"");
    }
}

#[test]
fn chained_encodings_are_undone_in_reverse() {
    let data = sample();
    // Applied gzip first, then br.
    let body = br(&gzip(&data));
    let (out, _) = decode_split("gzip, br", &body, 333);
    assert_eq!(out, data);
}

#[test]
fn unknown_encodings_are_rejected() {
    assert_eq!(
        BodyDecoder::new(Some("compress")).unwrap_err(),
        DecodeError::Unsupported("compress".into())
    );
    assert!(BodyDecoder::new(Some("gzip, snappy")).is_err());
    assert_eq!(
        BodyDecoder::new(Some("lz4")).unwrap_err().to_string(),
        "unsupported content-encoding \"lz4\""
    );
}

#[test]
fn corrupt_input_is_an_error_not_a_panic() {
    for enc in ["gzip", "br", "zstd", "deflate"] {
        let mut d = BodyDecoder::new(Some(enc)).unwrap();
        let mut failed = false;
        for _ in 0..4 {
            match d.feed(b"this is definitely not compressed data \x00\xff\x13") {
                Ok(_) => {}
                Err(e) => {
                    assert!(e.to_string().starts_with("corrupt"), "{enc}: {e}");
                    failed = true;
                    break;
                }
            }
        }
        if !failed {
            assert!(d.finish().is_err() || enc == "br", "{enc} accepted garbage");
        }
    }
    let mut d = BodyDecoder::new(Some("deflate")).unwrap();
    d.feed(b"x").unwrap();
    assert!(matches!(d.finish(), Err(DecodeError::Corrupt { encoding: "deflate", .. })));
}

#[test]
fn finish_twice_is_an_error() {
    let mut d = BodyDecoder::new(Some("gzip")).unwrap();
    d.feed(&gzip(b"x")).unwrap();
    d.finish().unwrap();
    assert_eq!(d.finish().unwrap_err(), DecodeError::Finished);
    assert_eq!(d.feed(b"x").unwrap_err(), DecodeError::Finished);
}

#[test]
fn decompression_bombs_are_capped() {
    // 64 MiB of zeros compresses to a few KiB in every format.
    let zeros = vec![0u8; 64 << 20];
    let limit = 1 << 20;
    for (enc, body) in [("gzip", gzip(&zeros)), ("br", br(&zeros)), ("zstd", zstd_enc(&zeros)), ("deflate", zlib(&zeros))] {
        assert!(body.len() < 1 << 20, "{enc} bomb is small: {}", body.len());
        let mut d = BodyDecoder::new_with_limit(Some(enc), limit).unwrap();
        let mut total = 0usize;
        for c in body.chunks(4096) {
            total += d.feed(c).unwrap().len();
        }
        total += d.finish().unwrap().len();
        assert_eq!(total, limit, "{enc}");
        assert!(d.truncated(), "{enc}");
    }
    // Identity is capped too.
    let mut d = BodyDecoder::new_with_limit(None, 10).unwrap();
    assert_eq!(d.feed(b"0123456789abc").unwrap(), b"0123456789");
    assert!(d.truncated());
    assert!(d.feed(b"more").unwrap().is_empty());
}

#[test]
fn exact_limit_is_not_truncation() {
    let data = b"exactly".to_vec();
    let mut d = BodyDecoder::new_with_limit(Some("gzip"), data.len()).unwrap();
    let mut out = d.feed(&gzip(&data)).unwrap();
    out.extend(d.finish().unwrap());
    assert_eq!(out, data);
    assert!(!d.truncated());
}
