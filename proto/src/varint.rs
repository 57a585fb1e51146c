//! Zig-zag variable-length integers (protobuf/Kafka style): small magnitudes,
//! positive or negative, take few bytes. Used for every per-record field.

/// Why a varint could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VarintError {
    #[error("varint runs past the end of the buffer")]
    Truncated,
    #[error("varint is longer than 10 bytes")]
    TooLong,
}

#[inline]
fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

#[inline]
fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Bytes `v` takes when written with [`put_varlong`].
#[inline]
pub fn varlong_len(v: i64) -> usize {
    let z = zigzag(v);
    // 1 byte per 7 bits, at least one byte.
    let bits = 64 - (z | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Appends `v` zig-zag encoded.
#[inline]
pub fn put_varlong(out: &mut Vec<u8>, v: i64) {
    let mut z = zigzag(v);
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// Reads a zig-zag varint at `*pos`, advancing `*pos` past it.
#[inline]
pub fn get_varlong(buf: &[u8], pos: &mut usize) -> Result<i64, VarintError> {
    let mut result: u64 = 0;
    let mut shift = 0u32;
    loop {
        let Some(&b) = buf.get(*pos) else {
            return Err(VarintError::Truncated);
        };
        *pos += 1;
        if shift == 63 && b > 1 {
            return Err(VarintError::TooLong);
        }
        result |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Ok(unzigzag(result));
        }
        shift += 7;
        if shift > 63 {
            return Err(VarintError::TooLong);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trips(v in any::<i64>()) {
            let mut out = Vec::new();
            put_varlong(&mut out, v);
            prop_assert_eq!(out.len(), varlong_len(v));
            let mut pos = 0;
            prop_assert_eq!(get_varlong(&out, &mut pos), Ok(v));
            prop_assert_eq!(pos, out.len());
        }

        #[test]
        fn never_panics_on_garbage(buf in proptest::collection::vec(any::<u8>(), 0..16)) {
            let mut pos = 0;
            let _ = get_varlong(&buf, &mut pos);
        }
    }

    #[test]
    fn small_values_are_one_byte() {
        for v in -64..64 {
            assert_eq!(varlong_len(v), 1, "{v}");
        }
        assert_eq!(varlong_len(64), 2);
        assert_eq!(varlong_len(i64::MIN), 10);
    }
}
