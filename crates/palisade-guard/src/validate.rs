//! Validators that cut false positives after a pattern matched: Luhn and IIN
//! prefixes for cards, mod-97 for IBANs, SSN ranges, IP address sanity, JWT
//! headers, and Shannon entropy.
//!
//! A validator gets the candidate secret (already normalised) and returns the
//! sub-range that really is the value, or `None` to reject it. Validators are
//! pure functions: they must never allocate unboundedly, log, or keep the
//! value.

use base64::Engine as _;
use std::ops::Range;

/// Validator signature: candidate in, refined range (relative to it) out.
pub(crate) type Check = fn(&str) -> Option<Range<usize>>;

fn whole(s: &str) -> Option<Range<usize>> {
    Some(0..s.len())
}

/// Shannon entropy in bits per byte.
pub fn shannon_entropy(s: &str) -> f64 {
    if s.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    for b in s.bytes() {
        counts[b as usize] += 1;
    }
    let n = s.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum()
}

// --- payment cards ---

/// Luhn checksum over ASCII digits.
pub fn luhn_valid(digits: &str) -> bool {
    let mut sum = 0u32;
    let mut double = false;
    for b in digits.bytes().rev() {
        if !b.is_ascii_digit() {
            return false;
        }
        let mut d = (b - b'0') as u32;
        if double {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
        double = !double;
    }
    !digits.is_empty() && sum.is_multiple_of(10)
}

/// Known issuer prefixes and the lengths they issue.
fn card_iin_ok(d: &str) -> bool {
    let n = d.len();
    let p = |k: usize| d[..k].parse::<u32>().unwrap_or(0);
    match d.as_bytes()[0] {
        b'4' => matches!(n, 13 | 16 | 19), // Visa
        b'5' => {
            (51..=55).contains(&p(2)) && n == 16
                || (p(2) == 50 || (56..=59).contains(&p(2))) && (12..=19).contains(&n)
        } // Mastercard, Maestro
        b'2' => (2221..=2720).contains(&p(4)) && n == 16, // Mastercard 2-series
        b'3' => {
            (p(2) == 34 || p(2) == 37) && n == 15                                    // Amex
                || ((300..=305).contains(&p(3)) || p(2) == 36 || p(2) == 38 || p(2) == 39) && (14..=19).contains(&n) // Diners
                || (3528..=3589).contains(&p(4)) && (16..=19).contains(&n) // JCB
        }
        b'6' => {
            (p(4) == 6011 || (644..=649).contains(&p(3)) || p(2) == 65) && (16..=19).contains(&n) // Discover
                || p(2) == 62 && (16..=19).contains(&n)                              // UnionPay
                || (p(2) == 60 || p(2) == 63 || p(2) == 67) && (12..=19).contains(&n)
            // Maestro and friends
        }
        _ => false,
    }
}

/// A card number: 13-19 digits, one kind of separator (or none), known IIN, Luhn.
pub(crate) fn card(s: &str) -> Option<Range<usize>> {
    let digits: String = s.chars().filter(|c| c.is_ascii_digit()).collect();
    let mut seps = s.chars().filter(|c| !c.is_ascii_digit());
    if let Some(first) = seps.next() {
        if seps.any(|c| c != first) {
            return None;
        }
    }
    if !(13..=19).contains(&digits.len()) {
        return None;
    }
    if digits.bytes().all(|b| b == digits.as_bytes()[0]) {
        return None;
    }
    (card_iin_ok(&digits) && luhn_valid(&digits))
        .then(|| whole(s))
        .flatten()
}

// --- IBAN ---

fn iban_length(country: &str) -> Option<usize> {
    const TABLE: &[(&str, usize)] = &[
        ("AD", 24),
        ("AE", 23),
        ("AL", 28),
        ("AT", 20),
        ("AZ", 28),
        ("BA", 20),
        ("BE", 16),
        ("BG", 22),
        ("BH", 22),
        ("BR", 29),
        ("BY", 28),
        ("CH", 21),
        ("CR", 22),
        ("CY", 28),
        ("CZ", 24),
        ("DE", 22),
        ("DK", 18),
        ("DO", 28),
        ("EE", 20),
        ("EG", 29),
        ("ES", 24),
        ("FI", 18),
        ("FO", 18),
        ("FR", 27),
        ("GB", 22),
        ("GE", 22),
        ("GI", 23),
        ("GL", 18),
        ("GR", 27),
        ("GT", 28),
        ("HR", 21),
        ("HU", 28),
        ("IE", 22),
        ("IL", 23),
        ("IQ", 23),
        ("IS", 26),
        ("IT", 27),
        ("JO", 30),
        ("KW", 30),
        ("KZ", 20),
        ("LB", 28),
        ("LC", 32),
        ("LI", 21),
        ("LT", 20),
        ("LU", 20),
        ("LV", 21),
        ("MC", 27),
        ("MD", 24),
        ("ME", 22),
        ("MK", 19),
        ("MR", 27),
        ("MT", 31),
        ("MU", 30),
        ("NL", 18),
        ("NO", 15),
        ("PK", 24),
        ("PL", 28),
        ("PS", 29),
        ("PT", 25),
        ("QA", 29),
        ("RO", 24),
        ("RS", 22),
        ("SA", 24),
        ("SC", 31),
        ("SE", 24),
        ("SI", 19),
        ("SK", 24),
        ("SM", 27),
        ("ST", 25),
        ("SV", 28),
        ("TL", 23),
        ("TN", 24),
        ("TR", 26),
        ("UA", 29),
        ("VA", 22),
        ("VG", 24),
        ("XK", 20),
    ];
    TABLE.iter().find(|(c, _)| *c == country).map(|(_, n)| *n)
}

/// ISO 13616 mod-97 check over an IBAN without spaces.
pub fn iban_mod97(iban: &str) -> bool {
    if iban.len() < 5 || !iban.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return false;
    }
    let (head, tail) = iban.split_at(4);
    let mut rem: u32 = 0;
    for b in tail.bytes().chain(head.bytes()) {
        let v = if b.is_ascii_digit() {
            (b - b'0') as u32
        } else {
            (b.to_ascii_uppercase() - b'A') as u32 + 10
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

/// An IBAN: the country's length, then mod-97. The pattern may have taken a
/// trailing word too, so the candidate is cut to the country's length.
pub(crate) fn iban(s: &str) -> Option<Range<usize>> {
    let want = iban_length(s.get(..2)?)?;
    let mut compact = String::with_capacity(want);
    let mut end = 0;
    for (i, c) in s.char_indices() {
        if c == ' ' {
            continue;
        }
        compact.push(c);
        end = i + c.len_utf8();
        if compact.len() == want {
            break;
        }
    }
    (compact.len() == want && iban_mod97(&compact)).then_some(0..end)
}

// --- US SSN ---

pub(crate) fn ssn(s: &str) -> Option<Range<usize>> {
    let parts: Vec<&str> = s.split('-').collect();
    let [area, group, serial] = parts.as_slice() else {
        return None;
    };
    let area_n: u32 = area.parse().ok()?;
    if area_n == 0 || area_n == 666 || area_n >= 900 || *group == "00" || *serial == "0000" {
        return None;
    }
    // Numbers that were published and voided (Woolworth wallet card, ads).
    if s == "078-05-1120" || s == "219-09-9999" {
        return None;
    }
    whole(s)
}

// --- IP addresses ---

/// Valid IPv4 (the pattern already bounds octets); loopback, the unspecified
/// address and broadcast are skipped as noise: they identify no one.
pub(crate) fn ipv4(s: &str) -> Option<Range<usize>> {
    let ip: std::net::Ipv4Addr = s.parse().ok()?;
    if ip.is_loopback() || ip.is_unspecified() || ip.is_broadcast() {
        return None;
    }
    whole(s)
}

/// Valid IPv6 per the standard parser; must hold a digit (so `Abc::Def`, a
/// code path, is not an address); `::` and `::1` are noise.
pub(crate) fn ipv6(s: &str) -> Option<Range<usize>> {
    let addr_part = s.split('%').next()?;
    let ip: std::net::Ipv6Addr = addr_part.parse().ok()?;
    if ip.is_loopback() || ip.is_unspecified() || !addr_part.bytes().any(|b| b.is_ascii_digit()) {
        return None;
    }
    if addr_part.matches(':').count() < 2 {
        return None;
    }
    whole(s)
}

// --- phone ---

pub(crate) fn phone(s: &str) -> Option<Range<usize>> {
    let digits: Vec<u8> = s.bytes().filter(|b| b.is_ascii_digit()).collect();
    if s.starts_with('+') {
        return (8..=15).contains(&digits.len()).then(|| whole(s)).flatten();
    }
    if s.starts_with('(') || (digits.len() == 10 && digits[0] != b'0') {
        // North American: area code and exchange do not start with 0 or 1.
        return (digits.len() == 10 && digits[0] >= b'2' && digits[3] >= b'2')
            .then(|| whole(s))
            .flatten();
    }
    // National trunk-prefixed numbers (0...).
    (digits.first() == Some(&b'0') && (9..=12).contains(&digits.len()))
        .then(|| whole(s))
        .flatten()
}

// --- email ---

pub(crate) fn email(s: &str) -> Option<Range<usize>> {
    const NOT_TLDS: &[&str] = &[
        "png", "jpg", "jpeg", "gif", "svg", "webp", "ico", "js", "mjs", "ts", "tsx", "jsx", "css",
        "json", "py", "rs", "go", "java", "rb", "md", "txt", "html", "lock", "toml", "yaml", "yml",
    ];
    let (local, domain) = s.rsplit_once('@')?;
    // `git@host:org/repo` is an SSH remote, not a person.
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") || local == "git" {
        return None;
    }
    let tld = domain.rsplit('.').next()?.to_ascii_lowercase();
    if NOT_TLDS.contains(&tld.as_str()) {
        return None;
    }
    whole(s)
}

// --- JWT ---

/// A JWT whose header decodes to a JSON object with an `alg`.
pub(crate) fn jwt(s: &str) -> Option<Range<usize>> {
    let header = s.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.as_object()?.get("alg")?;
    whole(s)
}

// --- secrets ---

fn classes(s: &str) -> (bool, bool, bool, bool) {
    let lower = s.bytes().any(|b| b.is_ascii_lowercase());
    let upper = s.bytes().any(|b| b.is_ascii_uppercase());
    let digit = s.bytes().any(|b| b.is_ascii_digit());
    let other = s.bytes().any(|b| !b.is_ascii_alphanumeric());
    (lower, upper, digit, other)
}

/// OpenAI-style `sk-` keys: long, mixed letters and digits, random-looking.
pub(crate) fn random_token(s: &str) -> Option<Range<usize>> {
    let (lower, upper, digit, _) = classes(s);
    (digit && (lower || upper) && shannon_entropy(s) >= 3.5)
        .then(|| whole(s))
        .flatten()
}

/// Value of a `password = "..."` style assignment: random enough for its
/// length, not a reference to somewhere else (`${VAR}`, `os.environ.X`,
/// `<password>`), and not a plain identifier.
pub(crate) fn generic_secret(s: &str) -> Option<Range<usize>> {
    let s_trim = s.trim_end_matches(['.', ',']);
    if s_trim.len() < 8 {
        return None;
    }
    if s_trim.starts_with(['$', '<', '%', '{', '*']) || s_trim.contains("${") {
        return None;
    }
    let (lower, upper, digit, other) = classes(s_trim);
    if !(digit || other) || !(lower || upper) {
        return None;
    }
    // Dotted identifiers: `process.env.DB_PASSWORD`, `settings.SECRET_KEY`.
    let ident = |p: &str| {
        !p.is_empty()
            && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !p.as_bytes()[0].is_ascii_digit()
    };
    if s_trim.contains('.') && s_trim.split('.').all(ident) {
        return None;
    }
    // snake/SCREAMING identifiers with no digits: `DATABASE_PASSWORD_FILE`.
    if !digit
        && s_trim
            .bytes()
            .all(|b| b.is_ascii_alphabetic() || b == b'_' || b == b'-')
    {
        return None;
    }
    let lower_s = s_trim.to_ascii_lowercase();
    for placeholder in [
        "example",
        "changeme",
        "password",
        "xxxxxx",
        "your_",
        "your-",
        "redacted",
        "placeholder",
    ] {
        if lower_s.contains(placeholder) {
            return None;
        }
    }
    let threshold = (0.8 * (s_trim.len() as f64).log2()).min(3.5);
    (shannon_entropy(s_trim) >= threshold).then_some(0..s_trim.len())
}

/// A database URL whose password is a real value, not `${DB_PASS}` or `****`.
pub(crate) fn database_url(s: &str) -> Option<Range<usize>> {
    let rest = s.split_once("://")?.1;
    let creds = rest.rsplit_once('@')?.0;
    let pass = creds.split_once(':')?.1;
    let lower = pass.to_ascii_lowercase();
    if pass.is_empty()
        || pass.starts_with(['$', '<', '{', '%'])
        || pass.bytes().all(|b| b == b'*' || b == b'x' || b == b'X')
        || ["password", "pass", "passwd", "secret", "changeme", "pwd"].contains(&lower.as_str())
    {
        return None;
    }
    whole(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entropy_bounds() {
        assert_eq!(shannon_entropy(""), 0.0);
        assert_eq!(shannon_entropy("aaaa"), 0.0);
        assert!((shannon_entropy("abcd") - 2.0).abs() < 1e-9);
    }

    #[test]
    fn luhn_and_cards() {
        assert!(luhn_valid("4111111111111111"));
        assert!(!luhn_valid("4111111111111112"));
        assert!(!luhn_valid(""));
        assert!(card("4111 1111 1111 1111").is_some());
        assert!(card("4111-1111 1111-1111").is_none(), "mixed separators");
        assert!(card("378282246310005").is_some(), "amex");
        assert!(card("9111111111111111").is_none(), "unknown IIN");
        assert!(card("0000000000000000").is_none());
    }

    #[test]
    fn iban_checks() {
        assert_eq!(iban("DE89 3704 0044 0532 0130 00"), Some(0..27));
        assert_eq!(
            iban("GB82 WEST 1234 5698 7654 32 ABCD"),
            Some(0..27),
            "trailing word cut"
        );
        assert!(
            iban("DE89 3704 0044 0532 0130 01").is_none(),
            "bad checksum"
        );
        assert!(
            iban("ZZ89 3704 0044 0532 0130 00").is_none(),
            "unknown country"
        );
        assert!(iban("DE89 3704").is_none(), "too short");
    }

    #[test]
    fn ssn_ranges() {
        assert!(ssn("123-45-6789").is_some());
        for bad in [
            "000-12-3456",
            "666-12-3456",
            "900-12-3456",
            "999-12-3456",
            "123-00-4567",
            "123-45-0000",
            "078-05-1120",
        ] {
            assert!(ssn(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn ip_noise_is_skipped() {
        assert!(ipv4("10.1.2.3").is_some());
        assert!(ipv4("127.0.0.1").is_none());
        assert!(ipv4("0.0.0.0").is_none());
        assert!(ipv6("2001:db8::8a2e:370:7334").is_some());
        assert!(ipv6("::1").is_none());
        assert!(ipv6("12:30:45").is_none());
        assert!(ipv6("abc::def").is_none());
    }

    #[test]
    fn jwt_header_must_have_alg() {
        // {"alg":"HS256","typ":"JWT"}
        assert!(jwt("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxIn0.sig").is_some());
        // {"typ":"JWT"}
        assert!(jwt("eyJ0eXAiOiJKV1QifQ.eyJzdWIiOiIxIn0.sig").is_none());
        assert!(jwt("eyJnotbase64!!.x.y").is_none());
    }

    #[test]
    fn generic_secret_shapes() {
        assert!(generic_secret("hX9#kP2$vL7q").is_some());
        assert!(generic_secret("process.env.DB_PASSWORD").is_none());
        assert!(generic_secret("${DB_PASSWORD}").is_none());
        assert!(generic_secret("DATABASE_PASSWORD_FILE").is_none());
        assert!(generic_secret("aaaaaaaa1").is_none());
        assert!(generic_secret("changeme123").is_none());
    }

    #[test]
    fn db_url_placeholders() {
        assert!(database_url("postgres://app:s3cr3tPw@db:5432/x").is_some());
        assert!(database_url("postgres://app:${PW}@db/x").is_none());
        assert!(database_url("postgres://app:****@db/x").is_none());
        assert!(database_url("postgres://app:password@db/x").is_none());
    }

    #[test]
    fn phone_shapes() {
        assert!(phone("+1 415 555 2671").is_some());
        assert!(phone("(415) 555-2671").is_some());
        assert!(phone("415-555-2671").is_some());
        assert!(phone("123-555-2671").is_none(), "area code starts with 1");
        assert!(phone("+12 34").is_none());
        assert!(phone("020 7946 0958").is_some());
    }
}
