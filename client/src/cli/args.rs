//! Pure helpers that turn command-line text and stdin lines into values,
//! kept apart from the I/O so they can be tested directly.

use tributary_client::OffsetSpec;

/// `key=value` (the value may itself contain `=`; it may be empty).
pub fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        Some(_) => Err(format!("'{s}' has an empty key: expected KEY=VALUE")),
        None => Err(format!("'{s}' is not KEY=VALUE")),
    }
}

/// `earliest`, `latest` or an offset.
pub fn parse_start_offset(s: &str) -> Result<OffsetSpec, String> {
    match s {
        "earliest" => Ok(OffsetSpec::Earliest),
        "latest" => Ok(OffsetSpec::Latest),
        n => match n.parse::<i64>() {
            Ok(n) if n >= 0 => Ok(OffsetSpec::Offset(n)),
            _ => Err(format!("'{s}' is not earliest, latest or an offset (0 or more)")),
        },
    }
}

/// An RFC 3339 date-time — `2024-05-01T12:00:00Z`,
/// `2024-05-01T14:00:00.250+02:00` — as ms since the epoch.
pub fn parse_rfc3339(s: &str) -> Result<i64, String> {
    let bad = || {
        format!("'{s}' is not an RFC 3339 date-time like 2024-05-01T12:00:00Z or 2024-05-01T14:00:00+02:00")
    };
    let t = s.trim();
    let num = |part: &str, min: i64, max: i64| -> Result<i64, String> {
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        part.parse::<i64>().ok().filter(|n| (min..=max).contains(n)).ok_or_else(bad)
    };
    let (date, rest) = t.split_at_checked(10).ok_or_else(bad)?;
    let mut d = date.split('-');
    let (Some(y), Some(m), Some(dd), None) = (d.next(), d.next(), d.next(), d.next()) else {
        return Err(bad());
    };
    if y.len() != 4 || m.len() != 2 || dd.len() != 2 {
        return Err(bad());
    }
    let (year, month) = (num(y, 0, 9999)?, num(m, 1, 12)?);
    let day = num(dd, 1, days_in_month(year, month))?;
    let rest = rest.strip_prefix(['T', 't', ' ']).ok_or_else(bad)?;
    let (clock, zone) = match rest.find(['Z', 'z', '+', '-']) {
        Some(at) => rest.split_at(at),
        None => return Err(bad()),
    };
    let (hms, fraction) = match clock.split_once('.') {
        Some((hms, f)) => (hms, Some(f)),
        None => (clock, None),
    };
    let mut c = hms.split(':');
    let (Some(h), Some(mi), Some(se), None) = (c.next(), c.next(), c.next(), c.next()) else {
        return Err(bad());
    };
    if h.len() != 2 || mi.len() != 2 || se.len() != 2 {
        return Err(bad());
    }
    let (hour, minute, second) = (num(h, 0, 23)?, num(mi, 0, 59)?, num(se, 0, 60)?.min(59));
    let millis = match fraction {
        None => 0,
        Some(f) => {
            num(f, 0, i64::MAX)?;
            let digits: String = f.chars().chain(std::iter::repeat('0')).take(3).collect();
            num(&digits, 0, 999)?
        }
    };
    let offset_minutes = match zone {
        "Z" | "z" => 0,
        z => {
            let sign = if z.starts_with('-') { -1 } else { 1 };
            let (oh, om) = z[1..].split_once(':').ok_or_else(bad)?;
            if oh.len() != 2 || om.len() != 2 {
                return Err(bad());
            }
            sign * (num(oh, 0, 23)? * 60 + num(om, 0, 59)?)
        }
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
    Ok(seconds * 1000 + millis)
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// An offset to reset to: 0 or more.
pub fn parse_offset(s: &str) -> Result<i64, String> {
    match s.parse::<i64>() {
        Ok(n) if n >= 0 => Ok(n),
        _ => Err(format!("'{s}' is not an offset (0 or more)")),
    }
}

/// A stdin line without its line ending (`\n` or `\r\n`).
pub fn strip_newline(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Splits a line at the first `separator` into key and value. A line without
/// the separator has no key and is all value.
pub fn split_key<'a>(line: &'a [u8], separator: &[u8]) -> (Option<&'a [u8]>, &'a [u8]) {
    if separator.is_empty() {
        return (None, line);
    }
    match line.windows(separator.len()).position(|w| w == separator) {
        Some(at) => (Some(&line[..at]), &line[at + separator.len()..]),
        None => (None, line),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_pairs() {
        assert_eq!(parse_key_value("a=b"), Ok(("a".into(), "b".into())));
        assert_eq!(parse_key_value("retention.ms=1000"), Ok(("retention.ms".into(), "1000".into())));
        assert_eq!(parse_key_value("a="), Ok(("a".into(), String::new())));
        assert_eq!(parse_key_value("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(parse_key_value("=b").is_err());
        assert!(parse_key_value("ab").is_err());
    }

    #[test]
    fn start_offsets() {
        assert_eq!(parse_start_offset("earliest"), Ok(OffsetSpec::Earliest));
        assert_eq!(parse_start_offset("latest"), Ok(OffsetSpec::Latest));
        assert_eq!(parse_start_offset("17"), Ok(OffsetSpec::Offset(17)));
        assert!(parse_start_offset("-1").is_err());
        assert!(parse_start_offset("soon").is_err());
    }

    #[test]
    fn rfc3339_date_times() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_rfc3339("2024-05-01T12:00:00Z"), Ok(1_714_564_800_000));
        assert_eq!(parse_rfc3339("2024-05-01T14:00:00+02:00"), Ok(1_714_564_800_000));
        assert_eq!(parse_rfc3339("2024-05-01T07:30:00-04:30"), Ok(1_714_564_800_000));
        assert_eq!(parse_rfc3339("2024-05-01t12:00:00.25z"), Ok(1_714_564_800_250));
        assert_eq!(parse_rfc3339("2024-05-01 12:00:00.123456Z"), Ok(1_714_564_800_123));
        assert_eq!(parse_rfc3339("2000-02-29T00:00:00Z"), Ok(951_782_400_000));
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59Z"), Ok(-1000));
        for bad in [
            "",
            "2024-05-01",
            "2024-05-01T12:00:00",
            "2023-02-29T00:00:00Z",
            "2024-13-01T00:00:00Z",
            "2024-05-01T24:00:00Z",
            "2024-5-1T12:00:00Z",
            "2024-05-01T12:00Z",
            "2024-05-01T12:00:00+0200",
            "2024-05-01T12:00:00.Z",
            "yesterday",
        ] {
            let e = parse_rfc3339(bad).unwrap_err();
            assert!(e.contains("RFC 3339"), "{bad}: {e}");
        }
    }

    #[test]
    fn reset_offsets_must_not_be_negative() {
        assert_eq!(parse_offset("0"), Ok(0));
        assert_eq!(parse_offset("42"), Ok(42));
        assert!(parse_offset("-1").is_err());
        assert!(parse_offset("x").is_err());
    }

    #[test]
    fn newlines_are_stripped() {
        assert_eq!(strip_newline(b"abc\n"), b"abc");
        assert_eq!(strip_newline(b"abc\r\n"), b"abc");
        assert_eq!(strip_newline(b"abc"), b"abc");
        assert_eq!(strip_newline(b"\n"), b"");
    }

    #[test]
    fn key_separator() {
        assert_eq!(split_key(b"k:v", b":"), (Some(&b"k"[..]), &b"v"[..]));
        assert_eq!(split_key(b"k:v:w", b":"), (Some(&b"k"[..]), &b"v:w"[..]));
        assert_eq!(split_key(b":v", b":"), (Some(&b""[..]), &b"v"[..]));
        assert_eq!(split_key(b"k::v", b"::"), (Some(&b"k"[..]), &b"v"[..]));
        assert_eq!(split_key(b"no-separator", b":"), (None, &b"no-separator"[..]));
        assert_eq!(split_key(b"k\tv", b"\t"), (Some(&b"k"[..]), &b"v"[..]));
        assert_eq!(split_key(b"kv", b""), (None, &b"kv"[..]));
    }
}
