//! Cheap candidate windows for detectors that have no keyword to prefilter
//! on (cards, phone numbers, IBANs, SSNs, IP addresses).
//!
//! One byte pass finds runs of digits joined by separators (` .-/()+`) and
//! runs of hex digits joined by colons. A detector then runs its regex only
//! inside windows around runs that could hold a match (enough digits, enough
//! dots), instead of over the whole text. Windows are widened by a margin and
//! then to ASCII whitespace, so a pattern's edge assertions (`^`, `\b`,
//! "preceded by a non-word character") see the same neighbours they would in
//! the whole text. This module must never drop a region that could hold a
//! match of the detectors that use it.

use std::ops::Range;

/// Bytes around a run that stay in its window (IBAN country code and letter
/// groups, a `+` and country code before a phone number).
const MARGIN: usize = 48;

/// A run of digits and separators.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DigitRun {
    pub start: usize,
    pub end: usize,
    pub digits: u32,
    pub dots: u32,
}

/// Candidate runs in one text.
#[derive(Debug, Default)]
pub(crate) struct Runs {
    pub digit_runs: Vec<DigitRun>,
    /// Runs of `[0-9A-Fa-f:]` with at least two colons and one digit.
    pub hex_colon_runs: Vec<(usize, usize)>,
}

fn is_sep(b: u8) -> bool {
    matches!(b, b' ' | b'.' | b'-' | b'/' | b'(' | b')' | b'+')
}

impl Runs {
    pub(crate) fn find(t: &str) -> Runs {
        let b = t.as_bytes();
        let mut runs = Runs::default();
        // Digit runs: start and end on a digit; at most two separators in a row.
        let mut i = 0;
        while i < b.len() {
            if !b[i].is_ascii_digit() {
                i += 1;
                continue;
            }
            let start = i;
            let mut end = i;
            let (mut digits, mut dots) = (0u32, 0u32);
            let mut j = i;
            let mut seps = 0;
            while j < b.len() {
                let c = b[j];
                if c.is_ascii_digit() {
                    digits += 1;
                    seps = 0;
                    end = j + 1;
                } else if is_sep(c) && seps < 2 {
                    seps += 1;
                    if c == b'.' {
                        dots += 1;
                    }
                } else {
                    break;
                }
                j += 1;
            }
            runs.digit_runs.push(DigitRun {
                start,
                end,
                digits,
                dots,
            });
            i = j.max(end);
        }
        // Hex-colon runs, grown around each colon (found with memchr), so
        // ordinary hex-looking words cost nothing.
        let hexish = |c: u8| c.is_ascii_hexdigit() || c == b':';
        let mut last_end = 0usize;
        for (c, _) in t.match_indices(':') {
            if c < last_end {
                continue;
            }
            let mut start = c;
            while start > last_end && hexish(b[start - 1]) {
                start -= 1;
            }
            let mut end = c + 1;
            while end < b.len() && hexish(b[end]) {
                end += 1;
            }
            last_end = end;
            let run = &b[start..end];
            let colons = run.iter().filter(|&&x| x == b':').count();
            if colons >= 2 && run.iter().any(u8::is_ascii_digit) {
                runs.hex_colon_runs.push((start, end));
            }
        }
        runs
    }
}

/// Merge candidate ranges into windows: widen by [`MARGIN`], then outward to
/// ASCII whitespace (or the text's ends), merging windows that meet.
pub(crate) fn windows(t: &str, ranges: impl Iterator<Item = (usize, usize)>) -> Vec<Range<usize>> {
    let b = t.as_bytes();
    let mut out: Vec<Range<usize>> = Vec::new();
    for (s, e) in ranges {
        let floor = out.last().map_or(0, |w| w.end);
        let mut ws = s.saturating_sub(MARGIN).max(floor);
        while ws > floor && !b[ws].is_ascii_whitespace() {
            ws -= 1;
        }
        let mut we = (e + MARGIN).min(b.len());
        while we < b.len() && !b[we - 1].is_ascii_whitespace() {
            we += 1;
        }
        match out.last_mut() {
            Some(last) if ws <= last.end => last.end = last.end.max(we),
            _ => out.push(ws..we),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digit_runs_count_digits_and_dots() {
        let r = Runs::find("card 4111 1111 1111 1111, ip 10.0.0.1; v1");
        let got: Vec<(&str, u32, u32)> = r
            .digit_runs
            .iter()
            .map(|d| {
                (
                    &"card 4111 1111 1111 1111, ip 10.0.0.1; v1"[d.start..d.end],
                    d.digits,
                    d.dots,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("4111 1111 1111 1111", 16, 0),
                ("10.0.0.1", 5, 3),
                ("1", 1, 0)
            ]
        );
    }

    #[test]
    fn three_separators_split_a_run() {
        assert_eq!(Runs::find("12 -34").digit_runs.len(), 1);
        assert_eq!(Runs::find("12 - 34").digit_runs.len(), 2);
    }

    #[test]
    fn hex_colon_runs() {
        let r = Runs::find("at 2001:db8::1 and std::vec and 12:30");
        assert_eq!(r.hex_colon_runs.len(), 1);
    }

    #[test]
    fn windows_snap_to_whitespace_and_merge() {
        let t = format!("{} x 123 y {}", "a".repeat(100), "b".repeat(100));
        let s = t.find("123").unwrap();
        let w = windows(&t, [(s, s + 3)].into_iter());
        assert_eq!(w.len(), 1);
        // Widened past the 'a' and 'b' runs to the text's ends (no whitespace).
        assert_eq!(w[0], 0..t.len());
        let t2 = format!(
            "{} {} 123 {} {}",
            "a".repeat(60),
            "c".repeat(60),
            "d".repeat(60),
            "b".repeat(60)
        );
        let s2 = t2.find("123").unwrap();
        let w = windows(&t2, [(s2, s2 + 3)].into_iter());
        assert_eq!(w.len(), 1);
        assert_eq!(
            w[0],
            60..t2.len() - 60,
            "starts on the space before the c run, ends after the one before the b run"
        );
        let w = windows(&t, [(s, s + 1), (s + 2, s + 3)].into_iter());
        assert_eq!(w.len(), 1, "overlapping windows merge");
    }
}
