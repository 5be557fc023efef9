//! Parsing `--since` / `--until`: an RFC 3339 timestamp, a date, or an age
//! such as `90s`, `30m`, `24h`, `7d`, `2w` counted back from now.
//!
//! Pure parsing: it must never read the clock itself (callers pass `now`).

use chrono::{DateTime, Duration, NaiveDate, Utc};

/// Parse `s` relative to `now`.
pub fn parse_time_at(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty time; expected RFC 3339 (2026-01-10T12:00:00Z), a date (2026-01-10) or an age (24h, 7d)".into());
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return d
            .and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc())
            .ok_or_else(|| format!("invalid date {s:?}"));
    }
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    if digits.is_empty() {
        return Err(format!(
            "invalid time {s:?}; expected RFC 3339 (2026-01-10T12:00:00Z), a date (2026-01-10) or an age (24h, 7d)"
        ));
    }
    if unit.starts_with(['-', ':', 'T']) {
        return Err(format!("invalid date or time {s:?}; expected RFC 3339 (2026-01-10T12:00:00Z) or a date (2026-01-10)"));
    }
    let n: i64 = digits
        .parse()
        .map_err(|_| format!("age {s:?} is too large"))?;
    let age = match unit {
        "s" => Duration::try_seconds(n),
        "m" => Duration::try_minutes(n),
        "h" => Duration::try_hours(n),
        "d" => Duration::try_days(n),
        "w" => Duration::try_weeks(n),
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {s:?}; use s, m, h, d or w"
            ))
        }
    }
    .ok_or_else(|| format!("age {s:?} is too large"))?;
    now.checked_sub_signed(age)
        .ok_or_else(|| format!("age {s:?} is too large"))
}

/// clap value parser: relative to the current time.
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    parse_time_at(s, Utc::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap()
    }

    #[test]
    fn absolute_times() {
        assert_eq!(
            parse_time_at("2026-01-10T12:00:00Z", now()).unwrap(),
            Utc.with_ymd_and_hms(2026, 1, 10, 12, 0, 0).unwrap()
        );
        assert_eq!(
            parse_time_at("2026-01-10T14:00:00+02:00", now()).unwrap(),
            Utc.with_ymd_and_hms(2026, 1, 10, 12, 0, 0).unwrap()
        );
        assert_eq!(
            parse_time_at("2026-01-10", now()).unwrap(),
            Utc.with_ymd_and_hms(2026, 1, 10, 0, 0, 0).unwrap()
        );
    }

    #[test]
    fn ages_count_back_from_now() {
        assert_eq!(
            parse_time_at("24h", now()).unwrap(),
            Utc.with_ymd_and_hms(2026, 2, 28, 12, 0, 0).unwrap()
        );
        assert_eq!(
            parse_time_at("7d", now()).unwrap(),
            Utc.with_ymd_and_hms(2026, 2, 22, 12, 0, 0).unwrap()
        );
        assert_eq!(
            parse_time_at("30m", now()).unwrap(),
            Utc.with_ymd_and_hms(2026, 3, 1, 11, 30, 0).unwrap()
        );
        assert_eq!(
            parse_time_at("2w", now()).unwrap(),
            Utc.with_ymd_and_hms(2026, 2, 15, 12, 0, 0).unwrap()
        );
        assert_eq!(
            parse_time_at("90s", now()).unwrap(),
            Utc.with_ymd_and_hms(2026, 3, 1, 11, 58, 30).unwrap()
        );
    }

    #[test]
    fn bad_input_says_what_is_expected() {
        for (input, needle) in [
            ("", "empty time"),
            ("yesterday", "expected RFC 3339"),
            ("-5h", "expected RFC 3339"),
            ("5y", "unknown unit"),
            ("5", "unknown unit"),
            ("99999999999999999999d", "too large"),
            ("9999999999999d", "too large"),
            ("2026-13-45", "invalid date or time"),
            ("2026-01-10 12:00", "invalid date or time"),
        ] {
            let e = parse_time_at(input, now()).unwrap_err();
            assert!(e.contains(needle), "{input:?}: {e}");
        }
    }
}
