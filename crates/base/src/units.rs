//! Sizes and durations as people write them (`24GiB`, `4GB`, `500ms`, `10m`) and as baton
//! prints them: one parser of each, for pipeline files, flags and environment variables alike.
//!
//! Binary units (KiB, MiB, GiB, TiB) are powers of 1024; decimal units (KB, MB, GB, TB) are
//! powers of 1000, as on a GPU's data sheet. Printing always uses binary units, as nvidia-smi
//! does.

use std::time::Duration;

/// A size that could not be read; the message names the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad size '{value}': {why}")]
pub struct SizeError {
    pub value: String,
    pub why: String,
}

/// A duration that could not be read. The message says how to write one; the caller names the
/// field and the value, which it knows better.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DurationError(pub &'static str);

const SIZE_UNITS: &[(&str, u64)] = &[
    ("tib", 1 << 40),
    ("gib", 1 << 30),
    ("mib", 1 << 20),
    ("kib", 1 << 10),
    ("tb", 1_000_000_000_000),
    ("gb", 1_000_000_000),
    ("mb", 1_000_000),
    ("kb", 1_000),
    ("t", 1 << 40),
    ("g", 1 << 30),
    ("m", 1 << 20),
    ("k", 1 << 10),
    ("b", 1),
];

/// Parses a size such as `24GiB`, `1.5 GB`, `512m` or `1048576` (bytes).
///
/// A bare `G`/`M`/`K` means the binary unit, as it does for `docker` and `ulimit`.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let bad = |why: &str| SizeError {
        value: text.to_string(),
        why: why.to_string(),
    };
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    if number.is_empty() {
        return Err(bad("it does not start with a number"));
    }
    let unit = unit.trim().to_ascii_lowercase();
    let multiplier = if unit.is_empty() {
        1
    } else {
        SIZE_UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, m)| *m)
            .ok_or_else(|| bad("unknown unit; use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB"))?
    };
    let value: f64 = number.parse().map_err(|_| bad("the number is malformed"))?;
    let bytes = value * multiplier as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(bad("it is too large"));
    }
    Ok(bytes.round() as u64)
}

/// Formats bytes with a binary unit and one decimal: `23.6 GiB`, `512.0 MiB`, `0 B`.
pub fn format_bytes(bytes: u64) -> String {
    const STEPS: &[(&str, u64)] = &[
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (name, size) in STEPS {
        if bytes >= *size {
            return format!("{:.1} {name}", bytes as f64 / *size as f64);
        }
    }
    format!("{bytes} B")
}

/// The longest duration baton accepts anywhere: 30 days.
pub const MAX_DURATION: Duration = Duration::from_secs(30 * 86_400);

/// Parses `500ms`, `5s`, `10m`, `2h`, or plain seconds (`0.5`), from 0 to 30 days. Callers
/// that need a narrower range (a sampling interval) check it on the result.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let t = text.trim();
    let (number, scale) = [("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)]
        .iter()
        .find_map(|(unit, scale)| t.strip_suffix(unit).map(|n| (n, *scale)))
        .unwrap_or((t, 1.0));
    let value: f64 = number.trim().parse().map_err(|_| {
        DurationError("write a duration such as 500ms, 5s, 10m or 2h (a bare number is seconds)")
    })?;
    let seconds = value * scale;
    if !seconds.is_finite() || seconds < 0.0 || seconds > MAX_DURATION.as_secs_f64() {
        return Err(DurationError("use a duration from 0 to 30 days"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_binary_and_decimal_units() {
        assert_eq!(parse_size("24GiB").unwrap(), 24 << 30);
        assert_eq!(parse_size("24 gib").unwrap(), 24 << 30);
        assert_eq!(parse_size("4GB").unwrap(), 4_000_000_000);
        assert_eq!(parse_size("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_size("512m").unwrap(), 512 << 20);
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_size("0").unwrap(), 0);
    }

    #[test]
    fn rejects_bad_sizes_naming_the_value() {
        for bad in ["", "GiB", "12 parsecs", "1.2.3GiB", "-4GiB", "1e400GiB"] {
            let err = parse_size(bad).unwrap_err().to_string();
            assert!(err.contains(&format!("'{bad}'")), "{err}");
        }
    }

    #[test]
    fn formats_with_binary_units() {
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(1023), "1023 B");
        assert_eq!(format_bytes(1536), "1.5 KiB");
        assert_eq!(format_bytes(24 << 30), "24.0 GiB");
        assert_eq!(format_bytes(3 << 40), "3.0 TiB");
    }

    #[test]
    fn durations_in_every_unit_and_bare_seconds() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("0.5").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration(" 2h ").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("720h").unwrap(), MAX_DURATION);
        for bad in ["soon", "", "-1", "NaN", "inf", "2d", "721h", "1e9"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
