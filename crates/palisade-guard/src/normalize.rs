//! Unicode normalisation before matching, with an offset map back to the
//! original text.
//!
//! Detectors run on a normalised *copy*: zero-width and soft-hyphen
//! characters are removed, full-width ASCII (U+FF01..U+FF5E) becomes ASCII and
//! exotic spaces (U+00A0, U+3000) become a plain space. Every match is mapped
//! back to a byte range of the original so redaction cuts the original text.
//! This module must never change the caller's text and never produce a range
//! that does not fall on a `char` boundary of the original.

use std::borrow::Cow;

/// Characters removed before matching: they are invisible and are used to
/// split a secret so that a naive pattern misses it.
fn is_stripped(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200D}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}' | '\u{00AD}' | '\u{180E}')
}

/// The ASCII stand-in for a look-alike character, if it has one.
fn mapped(c: char) -> Option<char> {
    match c {
        '\u{FF01}'..='\u{FF5E}' => char::from_u32(c as u32 - 0xFEE0),
        '\u{00A0}' | '\u{3000}' | '\u{2007}' | '\u{202F}' => Some(' '),
        _ => None,
    }
}

/// One run of the normalised text. An identity run maps byte for byte; a
/// mapped segment is one normalised byte standing for `orig_len` original bytes.
#[derive(Debug, Clone, Copy)]
struct Seg {
    norm: usize,
    orig: usize,
    /// `Some(len)` for a single mapped character, `None` for an identity run.
    mapped_len: Option<usize>,
}

/// A normalised view of a text plus the map back to it.
pub(crate) struct Normalized<'a> {
    text: Cow<'a, str>,
    /// Empty when the text needed no change (identity map).
    segs: Vec<Seg>,
}

impl<'a> Normalized<'a> {
    pub(crate) fn new(original: &'a str) -> Self {
        if original.is_ascii()
            || !original
                .chars()
                .any(|c| is_stripped(c) || mapped(c).is_some())
        {
            return Self {
                text: Cow::Borrowed(original),
                segs: Vec::new(),
            };
        }
        let mut out = String::with_capacity(original.len());
        let mut segs = Vec::new();
        let mut in_run = false;
        for (pos, c) in original.char_indices() {
            if is_stripped(c) {
                in_run = false;
            } else if let Some(m) = mapped(c) {
                segs.push(Seg {
                    norm: out.len(),
                    orig: pos,
                    mapped_len: Some(c.len_utf8()),
                });
                out.push(m);
                in_run = false;
            } else {
                if !in_run {
                    segs.push(Seg {
                        norm: out.len(),
                        orig: pos,
                        mapped_len: None,
                    });
                    in_run = true;
                }
                out.push(c);
            }
        }
        Self {
            text: Cow::Owned(out),
            segs,
        }
    }

    pub(crate) fn text(&self) -> &str {
        &self.text
    }

    fn seg(&self, i: usize) -> &Seg {
        let idx = self.segs.partition_point(|s| s.norm <= i);
        &self.segs[idx.saturating_sub(1)]
    }

    fn orig_start(&self, i: usize) -> usize {
        if self.segs.is_empty() {
            return i;
        }
        let s = self.seg(i);
        match s.mapped_len {
            Some(_) => s.orig,
            None => s.orig + (i - s.norm),
        }
    }

    fn orig_end_of_byte(&self, i: usize) -> usize {
        if self.segs.is_empty() {
            return i + 1;
        }
        let s = self.seg(i);
        match s.mapped_len {
            Some(len) => s.orig + len,
            None => s.orig + (i - s.norm) + 1,
        }
    }

    /// Map a non-empty normalised byte range to the original text. Invisible
    /// characters inside the range are included; those at its edges are not.
    pub(crate) fn to_original(&self, start: usize, end: usize) -> (usize, usize) {
        debug_assert!(end > start);
        (self.orig_start(start), self.orig_end_of_byte(end - 1))
    }
}

/// Normalise a short value (for placeholder numbering: the same secret with
/// and without zero-width characters gets the same number).
pub(crate) fn normalize_value(s: &str) -> String {
    Normalized::new(s).text().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_is_borrowed_identity() {
        let n = Normalized::new("plain text");
        assert!(matches!(n.text, Cow::Borrowed(_)));
        assert_eq!(n.to_original(0, 5), (0, 5));
    }

    #[test]
    fn non_ascii_without_tricks_is_identity() {
        let n = Normalized::new("grüße AKIA");
        assert!(n.segs.is_empty());
        assert_eq!(n.to_original(7, 11), (7, 11));
    }

    #[test]
    fn zero_width_inside_is_covered_edges_are_not() {
        let orig = "x \u{200B}AK\u{200D}IA\u{FEFF} y";
        let n = Normalized::new(orig);
        assert_eq!(n.text(), "x AKIA y");
        let s = n.text().find("AKIA").unwrap();
        let (a, b) = n.to_original(s, s + 4);
        assert_eq!(&orig[a..b], "AK\u{200D}IA");
    }

    #[test]
    fn full_width_maps_to_whole_chars() {
        let orig = "card ４１１１－１１";
        let n = Normalized::new(orig);
        assert_eq!(n.text(), "card 4111-11");
        let (a, b) = n.to_original(5, 12);
        assert_eq!(&orig[a..b], "４１１１－１１");
        let (a, b) = n.to_original(6, 7);
        assert_eq!(&orig[a..b], "１");
    }

    #[test]
    fn mixed_multibyte_runs_keep_boundaries() {
        let orig = "é\u{00AD}ü ＡＢ ç";
        let n = Normalized::new(orig);
        assert_eq!(n.text(), "éü AB ç");
        let t = n.text();
        let s = t.find("ü").unwrap();
        let (a, b) = n.to_original(s, t.len());
        assert_eq!(&orig[a..b], "ü ＡＢ ç");
        let (a, b) = n.to_original(0, t.len());
        assert_eq!(&orig[a..b], orig);
    }

    #[test]
    fn value_normalisation_strips_soft_hyphen() {
        assert_eq!(normalize_value("ab\u{00AD}c"), "abc");
    }
}
