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
