//! Go duration strings (`30s`, `1m30s`, `1.5h`, `500ms`), as fleet's `agent_ttl` takes them.
//!
//! ```
//! use std::time::Duration;
//! use fleetd::config::duration::{format_go_duration, parse_go_duration};
//! assert_eq!(parse_go_duration("1m30s"), Ok(Duration::from_secs(90)));
//! assert_eq!(format_go_duration(Duration::from_millis(1500)), "1.5s");
//! ```
//!
//! Hand-written because no crate parses exactly Go's `time.ParseDuration` grammar
//! (`[-+]?([0-9]*(\.[0-9]*)?[a-z]+)+`, units ns/us/µs/ms/s/m/h, fractions on any unit,
//! bare `0`): humantime rejects fractions and accepts units Go does not (`d`, `sec`),
//! so a fleet config that worked would start failing, or a wrong one would be accepted.
//! The algorithm follows Go's `time.ParseDuration` step by step, including its overflow
//! limit (2^63-1 ns) and its way of dropping fraction digits beyond what fits.
//! Negative durations are rejected: every duration option here is a length of time.

use std::time::Duration;

/// Why a string is not a Go duration. The `Display` text is what a user sees after
/// `invalid value "3x" for agent_ttl (from ...): `.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("invalid duration: expected a number followed by a unit, e.g. 30s, 1m30s or 500ms")]
    Syntax,
    #[error("invalid duration: missing unit (use ns, us, ms, s, m or h, e.g. 30s)")]
    MissingUnit,
    #[error("invalid duration: unknown unit \"{0}\" (use ns, us, ms, s, m or h, e.g. 30s)")]
    UnknownUnit(String),
    #[error("invalid duration: negative durations are not allowed")]
    Negative,
    #[error("invalid duration: too large (at most 2562047h47m16.854775807s)")]
    Overflow,
}

const LIMIT: u64 = 1 << 63;

fn unit_nanos(unit: &str) -> Option<u64> {
    Some(match unit {
        "ns" => 1,
        // Go accepts both the micro sign (U+00B5) and the Greek small mu (U+03BC).
        "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60 * 1_000_000_000,
        "h" => 3600 * 1_000_000_000,
        _ => return None,
    })
}

/// Go's `leadingInt`: digits to an integer, failing beyond 2^63.
fn leading_int(s: &str) -> Result<(u64, &str), DurationError> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let mut x: u64 = 0;
    for b in s[..end].bytes() {
        if x > LIMIT / 10 {
            return Err(DurationError::Overflow);
        }
        x = x * 10 + u64::from(b - b'0');
        if x > LIMIT {
            return Err(DurationError::Overflow);
        }
    }
    Ok((x, &s[end..]))
}

/// Go's `leadingFraction`: digits after the point as `x / scale`, silently dropping the
/// digits that no longer fit (they are below a nanosecond anyway).
fn leading_fraction(s: &str) -> (u64, f64, &str) {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (mut x, mut scale, mut overflow) = (0u64, 1f64, false);
    for b in s[..end].bytes() {
        if overflow {
            continue;
        }
        if x > (LIMIT - 1) / 10 {
            overflow = true;
            continue;
        }
        let y = x * 10 + u64::from(b - b'0');
        if y > LIMIT {
            overflow = true;
            continue;
        }
        x = y;
        scale *= 10.0;
    }
    (x, scale, &s[end..])
}

/// Parses a Go duration string; `0` (without unit) is zero, as in Go.
pub fn parse_go_duration(orig: &str) -> Result<Duration, DurationError> {
    let mut s = orig;
    let mut negative = false;
    if let Some(rest) = s.strip_prefix('-') {
        negative = true;
        s = rest;
    } else if let Some(rest) = s.strip_prefix('+') {
        s = rest;
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(DurationError::Syntax);
    }
    let mut total: u64 = 0;
    while !s.is_empty() {
        if !s.starts_with(|c: char| c == '.' || c.is_ascii_digit()) {
            return Err(DurationError::Syntax);
        }
        let before = s.len();
        let (mut v, rest) = leading_int(s)?;
        let pre = rest.len() != before;
        s = rest;
        let (mut frac, mut scale, mut post) = (0u64, 1f64, false);
        if let Some(rest) = s.strip_prefix('.') {
            let before = rest.len();
            let (f, sc, rest) = leading_fraction(rest);
            (frac, scale, post) = (f, sc, rest.len() != before);
            s = rest;
        }
        if !pre && !post {
            return Err(DurationError::Syntax);
        }
        let unit_end = s
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(s.len());
        if unit_end == 0 {
            return Err(DurationError::MissingUnit);
        }
        let unit_name = &s[..unit_end];
        s = &s[unit_end..];
        let unit = unit_nanos(unit_name)
            .ok_or_else(|| DurationError::UnknownUnit(unit_name.to_string()))?;
        if v > LIMIT / unit {
            return Err(DurationError::Overflow);
        }
        v *= unit;
        if frac > 0 {
            // Float arithmetic as in Go, so results agree to the nanosecond.
            v += (frac as f64 * (unit as f64 / scale)) as u64;
            if v > LIMIT {
                return Err(DurationError::Overflow);
            }
        }
        total += v;
        if total > LIMIT {
            return Err(DurationError::Overflow);
        }
    }
    if total > LIMIT - 1 {
        return Err(DurationError::Overflow);
    }
    if negative && total != 0 {
        return Err(DurationError::Negative);
    }
    Ok(Duration::from_nanos(total))
}

/// Formats like Go's `time.Duration.String` (`1h0m0s`, `1.5s`, `300ms`, `0s`), so values
/// read back by [`parse_go_duration`] and look familiar in logs. Durations beyond Go's range
/// are clamped to it.
pub fn format_go_duration(d: Duration) -> String {
    let nanos = u64::try_from(d.as_nanos())
        .unwrap_or(u64::MAX)
        .min(LIMIT - 1);
    if nanos == 0 {
        return "0s".to_string();
    }
    if nanos < 1_000_000_000 {
        let (value, scale, unit) = if nanos < 1_000 {
            (nanos, 1, "ns")
        } else if nanos < 1_000_000 {
            (nanos, 1_000, "\u{b5}s")
        } else {
            (nanos, 1_000_000, "ms")
        };
        return format!("{}{unit}", with_fraction(value, scale));
    }
    let hours = nanos / 3_600_000_000_000;
    let minutes = nanos / 60_000_000_000 % 60;
    let seconds = with_fraction(nanos % 60_000_000_000, 1_000_000_000);
    if hours > 0 {
        format!("{hours}h{minutes}m{seconds}s")
    } else if minutes > 0 {
        format!("{minutes}m{seconds}s")
    } else {
        format!("{seconds}s")
    }
}

/// `value / scale` in decimal without trailing zeros (`1500, 1000` -> `1.5`).
fn with_fraction(value: u64, scale: u64) -> String {
    let (int, frac) = (value / scale, value % scale);
    if frac == 0 {
        return int.to_string();
    }
    let width = scale.ilog10() as usize;
    let digits = format!("{frac:0width$}");
    format!("{int}.{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ns(n: u64) -> Duration {
        Duration::from_nanos(n)
    }

    #[test]
    fn parses_what_go_parses() {
        // Cases from Go's time/time_test.go parseDurationTests.
        let table: &[(&str, Duration)] = &[
            ("0", ns(0)),
            ("5s", Duration::from_secs(5)),
            ("30s", Duration::from_secs(30)),
            ("1478s", Duration::from_secs(1478)),
            ("+5s", Duration::from_secs(5)),
            ("-0", ns(0)),
            ("+0", ns(0)),
            ("5.0s", Duration::from_secs(5)),
            ("5.6s", Duration::from_millis(5600)),
            ("5.s", Duration::from_secs(5)),
            (".5s", Duration::from_millis(500)),
            ("1.0s", Duration::from_secs(1)),
            ("1.00s", Duration::from_secs(1)),
            ("1.004s", Duration::from_millis(1004)),
            ("1.0040s", Duration::from_millis(1004)),
            ("100.00100s", ns(100_001_000_000)),
            ("10ns", ns(10)),
            ("11us", ns(11_000)),
            ("12\u{b5}s", ns(12_000)),
            ("12\u{3bc}s", ns(12_000)),
            ("13ms", Duration::from_millis(13)),
            ("14s", Duration::from_secs(14)),
            ("15m", Duration::from_secs(15 * 60)),
            ("16h", Duration::from_secs(16 * 3600)),
            ("3h30m", Duration::from_secs(3 * 3600 + 30 * 60)),
            ("10.5s4m", Duration::from_millis(4 * 60_000 + 10_500)),
            ("1h2m3s4ms5us6ns", ns(3_723_004_005_006)),
            ("39h9m14.425s", Duration::from_millis(140_954_425)),
            ("52763797000ns", ns(52_763_797_000)),
            ("0.3333333333333333333h", ns(20 * 60 * 1_000_000_000)),
            ("9007199254740993ns", ns(9_007_199_254_740_993)),
            ("9223372036854775807ns", ns((1 << 63) - 1)),
            ("9223372036854775.807us", ns((1 << 63) - 1)),
            ("9223372036s854ms775us807ns", ns((1 << 63) - 1)),
            ("0.100000000000000000000h", Duration::from_secs(6 * 60)),
            (
                "0.830103483285477580700h",
                ns(49 * 60 * 1_000_000_000 + 48_372_539_827),
            ),
            ("1h2m3.5s", Duration::from_millis(3_723_500)),
            ("300ms", Duration::from_millis(300)),
            ("1m30s", Duration::from_secs(90)),
            ("500ms", Duration::from_millis(500)),
            ("0s", ns(0)),
            ("-0s", ns(0)),
        ];
        for (input, want) in table {
            assert_eq!(parse_go_duration(input), Ok(*want), "input {input:?}");
        }
    }

    #[test]
    fn rejects_what_go_rejects_and_negatives() {
        use DurationError::*;
        let table: &[(&str, DurationError)] = &[
            ("", Syntax),
            ("3", MissingUnit),
            ("-", Syntax),
            ("s", Syntax),
            (".", Syntax),
            ("-.", Syntax),
            (".s", Syntax),
            ("+.s", Syntax),
            ("1d", UnknownUnit("d".into())),
            ("3x", UnknownUnit("x".into())),
            ("1 s", UnknownUnit(" s".into())),
            ("1sec", UnknownUnit("sec".into())),
            ("1S", UnknownUnit("S".into())),
            ("30s ", UnknownUnit("s ".into())),
            ("1s2", MissingUnit),
            ("-1s", Negative),
            ("-1h2m", Negative),
            ("9223372036854775808ns", Overflow),
            ("9223372036854775.808us", Overflow),
            ("9223372036854ms775us808ns", Overflow),
            ("3000000h", Overflow),
            ("99999999999999999999999s", Overflow),
        ];
        for (input, want) in table {
            assert_eq!(
                parse_go_duration(input).as_ref(),
                Err(want),
                "input {input:?}"
            );
        }
    }

    #[test]
    fn formats_like_go() {
        let table: &[(Duration, &str)] = &[
            (ns(0), "0s"),
            (ns(1), "1ns"),
            (ns(1_100), "1.1\u{b5}s"),
            (Duration::from_micros(2_200), "2.2ms"),
            (Duration::from_millis(3_300), "3.3s"),
            (Duration::from_secs(4 * 60 + 5), "4m5s"),
            (Duration::from_millis(4 * 60_000 + 5_001), "4m5.001s"),
            (
                Duration::from_millis(5 * 3_600_000 + 6 * 60_000 + 7_001),
                "5h6m7.001s",
            ),
            (Duration::from_secs(8 * 60 + 1), "8m1s"),
            (Duration::from_secs(3600), "1h0m0s"),
            (ns((1 << 63) - 1), "2562047h47m16.854775807s"),
            (Duration::from_secs(30), "30s"),
        ];
        for (d, want) in table {
            assert_eq!(format_go_duration(*d), *want, "duration {d:?}");
        }
    }

    proptest! {
        #[test]
        fn format_then_parse_round_trips(n in 0u64..(1 << 63)) {
            let d = ns(n);
            prop_assert_eq!(parse_go_duration(&format_go_duration(d)), Ok(d));
        }

        #[test]
        fn never_panics(s in "[-+0-9.a-z\u{b5}\u{3bc} ]{0,24}") {
            let _ = parse_go_duration(&s);
        }
    }
}
