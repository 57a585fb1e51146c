//! The Kafka wire framing: a 4-byte big-endian size, then a request header
//! (API key, version, correlation id, client id, and tagged fields from
//! header v2 on), then the request body.
//!
//! This is the only code that reads bytes off a Kafka connection before they
//! are trusted, so it checks the size against the broker's limit before it
//! allocates, and refuses an API key or version the broker does not serve
//! before any body decoder runs. The caller closes the connection on any
//! error here: after a bad frame the stream has no trustworthy boundary.

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, RequestHeader};
use kafka_protocol::protocol::Decodable;

use super::versions;

/// Why a frame was refused (the connection is closed, nothing else happens).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("negative request size {0}")]
    NegativeSize(i32),
    #[error("request of {size} bytes is over the {max}-byte limit (kafka_max_request_bytes)")]
    TooLarge { size: usize, max: usize },
    #[error("request of {0} bytes is too short for a request header")]
    Short(usize),
    #[error("unknown or unsupported API key {0}")]
    UnknownApiKey(i16),
    #[error("{api:?} version {version} is not supported (this broker serves {min}..={max})")]
    UnsupportedVersion { api: ApiKey, version: i16, min: i16, max: i16 },
    #[error("malformed request header: {0}")]
    BadHeader(String),
}

/// The size a frame's 4-byte prefix announces, if the broker accepts it.
pub fn check_size(prefix: [u8; 4], max: usize) -> Result<usize, FrameError> {
    let size = i32::from_be_bytes(prefix);
    if size < 0 {
        return Err(FrameError::NegativeSize(size));
    }
    let size = size as usize;
    if size > max {
        return Err(FrameError::TooLarge { size, max });
    }
    Ok(size)
}

/// Splits one frame off the front of `buf`: `Ok(None)` while it is not all
/// there yet, else the frame's body and the bytes it took.
pub fn split_frame(buf: &[u8], max: usize) -> Result<Option<(Bytes, usize)>, FrameError> {
    let Some(prefix) = buf.get(..4) else { return Ok(None) };
    let size = check_size([prefix[0], prefix[1], prefix[2], prefix[3]], max)?;
    match buf.get(4..4 + size) {
        Some(body) => Ok(Some((Bytes::copy_from_slice(body), 4 + size))),
        None => Ok(None),
    }
}

/// One request, its header parsed and its body not yet decoded.
#[derive(Debug)]
pub struct Frame {
    pub api: ApiKey,
    pub version: i16,
    pub header: RequestHeader,
    pub body: Bytes,
}

/// What a frame's body turned out to be.
#[derive(Debug)]
pub enum Parsed {
    /// A request this broker serves, at a version it serves.
    Request(Frame),
    /// ApiVersions at a version newer than this broker knows: Kafka answers
    /// it (in v0) with UNSUPPORTED_VERSION and its versions, so the client
    /// can pick one, instead of closing.
    ApiVersionsTooNew { correlation_id: i32 },
}

/// Parses a frame's header and checks the API and version are served.
pub fn parse_frame(mut body: Bytes) -> Result<Parsed, FrameError> {
    if body.len() < 8 {
        return Err(FrameError::Short(body.len()));
    }
    let key = i16::from_be_bytes([body[0], body[1]]);
    let version = i16::from_be_bytes([body[2], body[3]]);
    let correlation_id = i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
    let api = versions::served(key).ok_or(FrameError::UnknownApiKey(key))?;
    let (min, max) = versions::range(api).ok_or(FrameError::UnknownApiKey(key))?;
    if version > max && api == ApiKey::ApiVersions {
        return Ok(Parsed::ApiVersionsTooNew { correlation_id });
    }
    if version < min || version > max {
        return Err(FrameError::UnsupportedVersion { api, version, min, max });
    }
    let header = RequestHeader::decode(&mut body, api.request_header_version(version))
        .map_err(|e| FrameError::BadHeader(e.to_string()))?;
    Ok(Parsed::Request(Frame { api, version, header, body }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(key: i16, version: i16, correlation: i32, client: &str) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&key.to_be_bytes());
        b.extend_from_slice(&version.to_be_bytes());
        b.extend_from_slice(&correlation.to_be_bytes());
        b.extend_from_slice(&(client.len() as i16).to_be_bytes());
        b.extend_from_slice(client.as_bytes());
        b
    }

    fn framed(body: &[u8]) -> Vec<u8> {
        let mut b = (body.len() as i32).to_be_bytes().to_vec();
        b.extend_from_slice(body);
        b
    }

    #[test]
    fn a_truncated_frame_waits_for_more() {
        let whole = framed(&header(18, 2, 7, "kcat"));
        for cut in 0..whole.len() {
            assert_eq!(split_frame(&whole[..cut], 1 << 20).unwrap(), None, "cut at {cut}");
        }
        let (body, used) = split_frame(&whole, 1 << 20).unwrap().unwrap();
        assert_eq!(used, whole.len());
        assert_eq!(&body[..], &whole[4..]);
    }

    #[test]
    fn an_oversized_or_negative_size_prefix_is_refused_before_reading_on() {
        let mut big = (2_000_000i32).to_be_bytes().to_vec();
        big.extend_from_slice(&[0; 16]);
        assert_eq!(
            split_frame(&big, 1_000_000).unwrap_err(),
            FrameError::TooLarge { size: 2_000_000, max: 1_000_000 }
        );
        assert_eq!(split_frame(&(-1i32).to_be_bytes(), 1000).unwrap_err(), FrameError::NegativeSize(-1));
    }

    #[test]
    fn an_unknown_api_key_is_refused() {
        for key in [-1i16, 999, 4 /* LeaderAndIsr: not served */] {
            let err = parse_frame(Bytes::from(header(key, 0, 1, "x"))).unwrap_err();
            assert_eq!(err, FrameError::UnknownApiKey(key));
        }
    }

    #[test]
    fn an_unsupported_version_is_refused_but_a_too_new_api_versions_is_answered() {
        let err = parse_frame(Bytes::from(header(3, 99, 1, "x"))).unwrap_err();
        assert!(matches!(err, FrameError::UnsupportedVersion { api: ApiKey::Metadata, version: 99, .. }));
        match parse_frame(Bytes::from(header(18, 99, 42, "x"))).unwrap() {
            Parsed::ApiVersionsTooNew { correlation_id } => assert_eq!(correlation_id, 42),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_header_is_parsed_with_its_client_id() {
        let mut h = header(3, 1, 9, "rdkafka");
        h.extend_from_slice(&[0, 0, 0, 0]);
        let Parsed::Request(f) = parse_frame(Bytes::from(h)).unwrap() else { panic!("not a request") };
        assert_eq!((f.api, f.version, f.header.correlation_id), (ApiKey::Metadata, 1, 9));
        assert_eq!(f.header.client_id.as_deref(), Some("rdkafka"));
        assert_eq!(&f.body[..], &[0, 0, 0, 0]);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_frame_decoder(buf in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(Some((body, used))) = split_frame(&buf, 1 << 20) {
                prop_assert!(used <= buf.len());
                let _ = parse_frame(body);
            }
            let _ = parse_frame(Bytes::from(buf));
        }

        #[test]
        fn any_served_request_with_a_garbage_body_is_refused_without_panicking(
            api in proptest::sample::select(versions::SERVED.to_vec()),
            pick in any::<prop::sample::Index>(),
            body in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let (key, min, max) = (api.0 as i16, api.1, api.2);
            let version = min + pick.index((max - min + 1) as usize) as i16;
            let mut h = header(key, version, 1, "p");
            if api.0.request_header_version(version) >= 2 {
                h.push(0); // no tagged fields
            }
            h.extend_from_slice(&body);
            if let Ok(Parsed::Request(mut f)) = parse_frame(Bytes::from(h)) {
                let _ = super::super::decode_only(&mut f);
            }
        }

        #[test]
        fn a_huge_array_count_is_refused_not_fatal(api in proptest::sample::select(versions::SERVED.to_vec()),
                                                   count in prop_oneof![Just(i32::MAX), Just(1 << 30), 1i32..i32::MAX]) {
            // Every request's body begins with (or soon reaches) an array
            // count; the decoders reserve before reading (see `alloc`).
            for version in [api.1, api.2] {
                let mut h = header(api.0 as i16, version, 1, "p");
                if api.0.request_header_version(version) >= 2 {
                    h.push(0);
                }
                for _ in 0..3 {
                    h.extend_from_slice(&count.to_be_bytes());
                }
                if let Ok(Parsed::Request(mut f)) = parse_frame(Bytes::from(h)) {
                    let _ = super::super::decode_only(&mut f);
                }
            }
        }

        #[test]
        fn any_served_header_with_garbage_after_it_never_panics(
            key in proptest::sample::select(versions::SERVED.iter().map(|v| v.0 as i16).collect::<Vec<_>>()),
            version in 0i16..14,
            tail in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut h = header(key, version, 1, "p");
            h.extend_from_slice(&tail);
            let _ = parse_frame(Bytes::from(h));
        }
    }
}
