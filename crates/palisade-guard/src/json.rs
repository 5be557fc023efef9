//! A span-keeping view of a JSON document, for rewriting single string
//! values in place.
//!
//! The body is validated by `serde_json` first; this walker then records the
//! byte span of every string value so a redaction can splice a re-encoded
//! string into the original bytes and leave every other byte as it was
//! (field order, number formatting, whitespace). Strings are decoded (escapes
//! such as `\u0041` resolved) before anything scans them: content is never
//! matched against raw JSON bytes. This module must never change a byte
//! outside the spans it is asked to replace.

use std::ops::Range;

/// A parsed JSON value with string spans.
pub(crate) enum Node {
    Obj(Vec<(String, Node)>),
    Arr(Vec<Node>),
    /// Span of the string literal including its quotes.
    Str(Range<usize>),
    Other,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum JsonError {
    #[error("not JSON")]
    NotJson,
}

impl Node {
    /// The value for `key`; with duplicate keys the LAST one, as serde_json,
    /// JavaScript, Python and Go read it (so the value we scan is the value
    /// the provider reads).
    pub(crate) fn get(&self, key: &str) -> Option<&Node> {
        match self {
            Node::Obj(fields) => fields.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub(crate) fn str_span(&self) -> Option<&Range<usize>> {
        match self {
            Node::Str(r) => Some(r),
            _ => None,
        }
    }
}

/// Validate with serde_json (strict, depth-limited), then build the span tree.
pub(crate) fn parse(body: &[u8]) -> Result<Node, JsonError> {
    parse_checked(body).map(|(n, _)| n)
}

/// Like [`parse`], also saying whether any object repeats a key (parsers
/// disagree on which duplicate wins, so callers should not trust a
/// content-path reading of such a body).
pub(crate) fn parse_checked(body: &[u8]) -> Result<(Node, bool), JsonError> {
    serde_json::from_slice::<serde::de::IgnoredAny>(body).map_err(|_| JsonError::NotJson)?;
    let mut p = Parser {
        b: body,
        i: 0,
        duplicate_keys: false,
    };
    let node = p.value()?;
    Ok((node, p.duplicate_keys))
}

/// Decode one string literal (with quotes) into its text.
pub(crate) fn decode(body: &[u8], span: &Range<usize>) -> Result<String, JsonError> {
    let raw = &body[span.clone()];
    if raw.len() >= 2 && !raw.contains(&b'\\') {
        return std::str::from_utf8(&raw[1..raw.len() - 1])
            .map(str::to_string)
            .map_err(|_| JsonError::NotJson);
    }
    serde_json::from_slice::<String>(raw).map_err(|_| JsonError::NotJson)
}

/// Replace string spans with new string values (re-encoded as JSON).
/// `edits` must be sorted by span start and not overlap.
pub(crate) fn splice(body: &[u8], edits: &[(Range<usize>, String)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut last = 0;
    for (span, replacement) in edits {
        out.extend_from_slice(&body[last..span.start]);
        out.extend_from_slice(replacement.as_bytes());
        last = span.end;
    }
    out.extend_from_slice(&body[last..]);
    out
}

/// JSON string literal for `s`.
pub(crate) fn encode(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
    duplicate_keys: bool,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.b.len() && matches!(self.b[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn peek(&self) -> Result<u8, JsonError> {
        self.b.get(self.i).copied().ok_or(JsonError::NotJson)
    }

    fn value(&mut self) -> Result<Node, JsonError> {
        self.ws();
        match self.peek()? {
            b'{' => {
                self.i += 1;
                let mut fields = Vec::new();
                loop {
                    self.ws();
                    match self.peek()? {
                        b'}' => {
                            self.i += 1;
                            return Ok(Node::Obj(fields));
                        }
                        b',' => self.i += 1,
                        b'"' => {
                            let span = self.string()?;
                            let key = decode(self.b, &span)?;
                            self.ws();
                            if self.peek()? != b':' {
                                return Err(JsonError::NotJson);
                            }
                            self.i += 1;
                            let v = self.value()?;
                            if !self.duplicate_keys && fields.iter().any(|(k, _)| *k == key) {
                                self.duplicate_keys = true;
                            }
                            fields.push((key, v));
                        }
                        _ => return Err(JsonError::NotJson),
                    }
                }
            }
            b'[' => {
                self.i += 1;
                let mut items = Vec::new();
                loop {
                    self.ws();
                    match self.peek()? {
                        b']' => {
                            self.i += 1;
                            return Ok(Node::Arr(items));
                        }
                        b',' => self.i += 1,
                        _ => items.push(self.value()?),
                    }
                }
            }
            b'"' => Ok(Node::Str(self.string()?)),
            _ => {
                while self.i < self.b.len()
                    && !matches!(
                        self.b[self.i],
                        b',' | b']' | b'}' | b' ' | b'\t' | b'\n' | b'\r'
                    )
                {
                    self.i += 1;
                }
                Ok(Node::Other)
            }
        }
    }

    fn string(&mut self) -> Result<Range<usize>, JsonError> {
        let start = self.i;
        self.i += 1;
        while self.i < self.b.len() {
            match self.b[self.i] {
                b'\\' => self.i += 2,
                b'"' => {
                    self.i += 1;
                    return Ok(start..self.i);
                }
                _ => self.i += 1,
            }
        }
        Err(JsonError::NotJson)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_and_decoding() {
        let body = br#"{"a": [1, "x\u0041y", {"k\"": "v"}], "b": true}"#;
        let n = parse(body).unwrap();
        let Node::Arr(items) = n.get("a").unwrap() else {
            panic!()
        };
        let span = items[1].str_span().unwrap();
        assert_eq!(decode(body, span).unwrap(), "xAy");
        let Node::Obj(f) = &items[2] else { panic!() };
        assert_eq!(f[0].0, "k\"");
    }

    #[test]
    fn splice_keeps_other_bytes() {
        let body = br#"{"n": 1.50, "s": "secret",  "t": "keep"}"#;
        let n = parse(body).unwrap();
        let span = n.get("s").unwrap().str_span().unwrap().clone();
        let out = splice(body, &[(span, encode("[X_1] \"quoted\""))]);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"n": 1.50, "s": "[X_1] \"quoted\"",  "t": "keep"}"#
        );
        parse(&out).unwrap();
    }

    #[test]
    fn rejects_non_json() {
        assert!(parse(b"not json").is_err());
        assert!(parse(b"{\"a\": }").is_err());
        assert!(parse(b"").is_err());
    }
}
