//! Go-style durations (`"10s"`, `"1m30s"`, `"500ms"`), the format Consul's API uses.

use std::fmt;

/// Why a duration string could not be parsed. Nothing was changed by the failed parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason}")]
pub struct DurationParseError {
    /// The text that was given.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// The largest duration accepted, in milliseconds (about 292 years, Go's limit).
pub const DURATION_MS_MAX: u64 = i64::MAX as u64 / 1_000_000;

/// Parses a Go duration string into whole milliseconds (sub-millisecond parts round up, so a
/// positive duration never becomes zero). A bare `"0"` is zero; other numbers need a unit.
///
/// # Errors
/// Returns [`DurationParseError`] for empty input, a missing or unknown unit, a negative value
/// or an overflow.
pub fn parse_go_duration_ms(input: &str) -> Result<u64, DurationParseError> {
    let fail = |reason| DurationParseError {
        input: input.to_string(),
        reason,
    };
    let text = input.trim();
    if text.is_empty() {
        return Err(fail("empty"));
    }
    if text == "0" {
        return Ok(0);
    }
    if text.starts_with('-') {
        return Err(fail("negative durations are not allowed"));
    }
    let text = text.strip_prefix('+').unwrap_or(text);
    let mut total_ns: u128 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| fail("missing unit (use ns, us, ms, s, m or h)"))?;
        if number_len == 0 {
            return Err(fail("expected a number"));
        }
        let (number, after) = rest.split_at(number_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let unit_ns: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(fail("unknown unit (use ns, us, ms, s, m or h)")),
        };
        total_ns = total_ns
            .checked_add(number_ns(number, unit_ns).ok_or_else(|| fail("bad number"))?)
            .ok_or_else(|| fail("overflow"))?;
        rest = next;
    }
    let ms = total_ns.div_ceil(1_000_000);
    if ms > u128::from(DURATION_MS_MAX) {
        return Err(fail("overflow"));
    }
    Ok(ms as u64)
}

fn number_ns(number: &str, unit_ns: u128) -> Option<u128> {
    let (whole, frac) = match number.split_once('.') {
        Some((w, f)) => (w, f),
        None => (number, ""),
    };
    if whole.is_empty() && frac.is_empty() {
        return None;
    }
    let whole_value: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let mut ns = whole_value.checked_mul(unit_ns)?;
    let mut scale = unit_ns;
    for digit in frac.chars().take(18) {
        scale /= 10;
        ns += u128::from(digit.to_digit(10)?) * scale;
    }
    Some(ns)
}

/// Formats milliseconds the way Go prints a `time.Duration` (`"1m30s"`, `"500ms"`, `"0s"`).
pub fn format_go_duration(ms: u64) -> String {
    struct Go(u64);
    impl fmt::Display for Go {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let ms = self.0;
            if ms == 0 {
                return f.write_str("0s");
            }
            if ms < 1000 {
                return write!(f, "{ms}ms");
            }
            let hours = ms / 3_600_000;
            let minutes = (ms / 60_000) % 60;
            let seconds = (ms / 1000) % 60;
            let millis = ms % 1000;
            if hours > 0 {
                write!(f, "{hours}h")?;
            }
            if hours > 0 || minutes > 0 {
                write!(f, "{minutes}m")?;
            }
            if millis == 0 {
                write!(f, "{seconds}s")
            } else {
                let frac = format!("{millis:03}");
                write!(f, "{seconds}.{}s", frac.trim_end_matches('0'))
            }
        }
    }
    Go(ms).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_go_duration_common_forms_parse() {
        assert_eq!(parse_go_duration_ms("10s"), Ok(10_000));
        assert_eq!(parse_go_duration_ms("1m30s"), Ok(90_000));
        assert_eq!(parse_go_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_go_duration_ms("1.5h"), Ok(5_400_000));
        assert_eq!(parse_go_duration_ms("0"), Ok(0));
        assert_eq!(parse_go_duration_ms("1us"), Ok(1), "sub-ms rounds up");
        assert_eq!(parse_go_duration_ms(".5s"), Ok(500));
    }

    #[test]
    fn parse_go_duration_garbage_is_rejected() {
        for bad in [
            "",
            "banana",
            "10",
            "-1s",
            "1x",
            "s",
            "1.2.3s",
            "99999999999999999h",
        ] {
            assert!(
                parse_go_duration_ms(bad).is_err(),
                "{bad:?} must be rejected"
            );
        }
    }

    #[test]
    fn format_go_duration_matches_go() {
        assert_eq!(format_go_duration(0), "0s");
        assert_eq!(format_go_duration(500), "500ms");
        assert_eq!(format_go_duration(90_000), "1m30s");
        assert_eq!(format_go_duration(3_600_000), "1h0m0s");
        assert_eq!(format_go_duration(1_500), "1.5s");
    }

    proptest::proptest! {
        #[test]
        fn format_then_parse_round_trips(ms in 0u64..10_000_000_000) {
            proptest::prop_assert_eq!(parse_go_duration_ms(&format_go_duration(ms)), Ok(ms));
        }

        #[test]
        fn parse_never_panics(text in ".{0,24}") {
            let _ = parse_go_duration_ms(&text);
        }
    }
}
