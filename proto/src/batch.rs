//! The record batch format: what producers send, segment files hold and
//! consumers receive, byte for byte.
//!
//! A batch is a 61-byte header followed by its records. All fixed-width
//! integers are big-endian (the layout is Kafka's "magic v2", so the format is
//! familiar and its trade-offs are well understood):
//!
//! ```text
//! offset  size  field
//!      0     8  base_offset        offset of the first record (set by the broker)
//!      8     4  batch_length       bytes after this field, to the end of the batch
//!     12     4  leader_epoch       epoch of the leader that appended it (set by the broker)
//!     16     1  magic              always 2
//!     17     4  crc                CRC32C of every byte from `attributes` to the end
//!     21     2  attributes         bits 0-2 compression (0 none, 1 gzip, 2 snappy,
//!                                  3 lz4, 4 zstd),
//!                                  bit 3 timestamp type (0 create time, 1 log append time)
//!     23     4  last_offset_delta  record_count - 1
//!     27     8  base_timestamp     ms since the epoch, of the first record
//!     35     8  max_timestamp      largest record timestamp in the batch
//!     43     8  producer_id        -1 when the producer is not idempotent
//!     51     2  producer_epoch
//!     53     4  base_sequence      sequence of the first record, -1 without a producer id
//!     57     4  record_count
//!     61     -  records            compressed as one block when attributes say so
//! ```
//!
//! Each record is a zig-zag varint length followed by:
//! `attributes: i8, timestamp_delta: varint, offset_delta: varint,
//! key_len: varint (-1 = null), key, value_len: varint (-1 = null), value,
//! header_count: varint, then per header key_len: varint, key (UTF-8),
//! value_len: varint (-1 = null), value`.
//!
//! The CRC deliberately leaves out `base_offset` and `leader_epoch`: the broker
//! stamps those on append without recomputing it, so the bytes a producer
//! checksummed are the bytes a consumer verifies.
//!
//! Compression covers the records section as one unit, in the framings
//! Kafka's clients use, so a Kafka producer's batch is stored and served to a
//! Kafka consumer unchanged:
//!
//! - gzip (1): one gzip member (RFC 1952); concatenated members are read.
//! - snappy (2): written in snappy-java's "xerial" framing (the 16-byte header
//!   `\x82SNAPPY\0`, version 1, compatible version 1, then blocks of a 4-byte
//!   big-endian length and a raw snappy block, each at most 32 KiB before
//!   compression), which the Java client requires; read in that framing and
//!   as one raw snappy block, which librdkafka writes.
//! - lz4 (3): the LZ4 frame format (magic `0x184D2204`) with independent
//!   64 KiB blocks and no checksums but the header's, as Kafka's Java client
//!   writes and requires (it refuses dependent blocks).
//! - zstd (4): one standard zstd frame.
//!
//! Batches written before the Kafka listener used lz4 *block* format with the
//! uncompressed size as a 4-byte little-endian prefix. They are still read:
//! such a prefix can never equal the frame magic, because that value
//! (407 708 164) is above [`MAX_UNCOMPRESSED`], a limit every writer obeyed.
//! So old data directories keep working with no migration; compaction
//! rewrites them in frame format, and [`reframe_legacy_lz4`] converts them
//! for Kafka clients (which read only frames) on the way out.

use bytes::Bytes;

use crate::varint::{get_varlong, put_varlong, varlong_len, VarintError};

/// Size of the fixed batch header.
pub const HEADER_LEN: usize = 61;
/// Bytes before `batch_length` counts: base offset + the length field itself.
pub const LOG_OVERHEAD: usize = 12;
/// The only batch format version.
pub const MAGIC: i8 = 2;
/// Largest records section a batch may decompress to; a guard against
/// decompression bombs.
pub const MAX_UNCOMPRESSED: usize = 64 * 1024 * 1024;

const LENGTH_AT: usize = 8;
const LEADER_EPOCH_AT: usize = 12;
const MAGIC_AT: usize = 16;
const CRC_AT: usize = 17;
const ATTRIBUTES_AT: usize = 21;
const LAST_OFFSET_DELTA_AT: usize = 23;
const BASE_TIMESTAMP_AT: usize = 27;
const MAX_TIMESTAMP_AT: usize = 35;
const PRODUCER_ID_AT: usize = 43;
const PRODUCER_EPOCH_AT: usize = 51;
const BASE_SEQUENCE_AT: usize = 53;
const RECORD_COUNT_AT: usize = 57;

const COMPRESSION_MASK: i16 = 0x07;
const TIMESTAMP_TYPE_BIT: i16 = 0x08;

/// What is wrong with a batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("batch truncated: need {needed} bytes, have {available}")]
    Truncated { needed: usize, available: usize },
    #[error("unsupported batch format version (magic {0}, expected 2)")]
    BadMagic(i8),
    #[error("batch CRC32C mismatch: header says {stored:#010x}, content has {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("invalid batch: {0}")]
    Invalid(&'static str),
    #[error("unsupported compression codec {0} (supported: 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd)")]
    UnsupportedCompression(i16),
    #[error("batch records could not be decompressed: {0}")]
    Decompress(String),
    #[error("corrupt record: {0}")]
    Varint(#[from] VarintError),
}

/// How a batch's records section is compressed (see the module docs for
/// the exact framings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    #[default]
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

/// The LZ4 frame magic number, as it appears on the wire (little-endian).
const LZ4_FRAME_MAGIC: [u8; 4] = 0x184D_2204u32.to_le_bytes();
/// snappy-java's stream header: magic, version 1, compatible version 1.
const XERIAL_HEADER: [u8; 16] = *b"\x82SNAPPY\0\0\0\0\x01\0\0\0\x01";
/// Uncompressed bytes per xerial block (snappy-java's default).
const XERIAL_BLOCK: usize = 32 * 1024;

impl Compression {
    /// Every codec, in id order.
    pub const ALL: [Compression; 5] =
        [Compression::None, Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd];

    /// The codec id stored in `attributes` bits 0-2.
    pub fn id(self) -> i16 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        }
    }

    pub fn from_id(id: i16) -> Result<Self, BatchError> {
        match id {
            0 => Ok(Compression::None),
            1 => Ok(Compression::Gzip),
            2 => Ok(Compression::Snappy),
            3 => Ok(Compression::Lz4),
            4 => Ok(Compression::Zstd),
            other => Err(BatchError::UnsupportedCompression(other)),
        }
    }

    /// Compresses a records section. Every encoder writes into a `Vec`, which
    /// cannot fail short of running out of memory.
    pub fn compress(self, raw: &[u8]) -> Vec<u8> {
        use std::io::Write;
        match self {
            Compression::None => raw.to_vec(),
            Compression::Gzip => {
                // Level 1: producers favour throughput, as with zstd below.
                let mut enc = flate2::write::GzEncoder::new(
                    Vec::with_capacity(raw.len() / 2 + 32),
                    flate2::Compression::fast(),
                );
                enc.write_all(raw).expect("writing to a Vec cannot fail");
                enc.finish().expect("writing to a Vec cannot fail")
            }
            Compression::Snappy => xerial_compress(raw),
            Compression::Lz4 => {
                let info = lz4_flex::frame::FrameInfo::new()
                    .block_size(lz4_flex::frame::BlockSize::Max64KB)
                    .block_mode(lz4_flex::frame::BlockMode::Independent);
                let mut enc = lz4_flex::frame::FrameEncoder::with_frame_info(
                    info,
                    Vec::with_capacity(raw.len() / 2 + 32),
                );
                enc.write_all(raw).expect("writing to a Vec cannot fail");
                enc.finish().expect("writing to a Vec cannot fail")
            }
            // Level 1: zstd's fastest useful level; producers favour throughput.
            Compression::Zstd => zstd::bulk::compress(raw, 1).unwrap_or_else(|_| {
                // zstd only fails on allocation; fall back to storing the block
                // as a single raw zstd frame via the streaming encoder.
                zstd::encode_all(raw, 1).unwrap_or_default()
            }),
        }
    }

    /// Decompresses a records section to at most `limit` bytes (a guard
    /// against decompression bombs: more is an error, not a big allocation).
    pub fn decompress(self, data: &[u8], limit: usize) -> Result<Vec<u8>, BatchError> {
        match self {
            Compression::None => Ok(data.to_vec()),
            Compression::Gzip => read_limited(flate2::read::MultiGzDecoder::new(data), "gzip", limit),
            Compression::Snappy if data.starts_with(&XERIAL_HEADER[..8]) => xerial_decompress(data, limit),
            Compression::Snappy => snappy_block_decompress(data, limit),
            Compression::Lz4 if data.starts_with(&LZ4_FRAME_MAGIC) => {
                read_limited(lz4_flex::frame::FrameDecoder::new(data), "lz4", limit)
            }
            Compression::Lz4 => legacy_lz4_block_decompress(data, limit),
            Compression::Zstd => {
                zstd::bulk::decompress(data, limit).map_err(|e| BatchError::Decompress(e.to_string()))
            }
        }
    }
}

/// Reads a decoder to its end, refusing more than `limit` bytes.
fn read_limited(reader: impl std::io::Read, codec: &str, limit: usize) -> Result<Vec<u8>, BatchError> {
    use std::io::Read;
    let mut out = Vec::new();
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| BatchError::Decompress(format!("{codec}: {e}")))?;
    if out.len() > limit {
        return Err(BatchError::Decompress(format!("{codec} data expands beyond the {limit}-byte limit")));
    }
    Ok(out)
}

fn xerial_compress(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(XERIAL_HEADER.len() + raw.len() / 2 + 32);
    out.extend_from_slice(&XERIAL_HEADER);
    let mut enc = snap::raw::Encoder::new();
    let mut block = Vec::new();
    for chunk in raw.chunks(XERIAL_BLOCK) {
        block.resize(snap::raw::max_compress_len(chunk.len()), 0);
        // A chunk of at most 32 KiB into a buffer of max_compress_len bytes
        // is within every limit the encoder checks.
        let n = enc.compress(chunk, &mut block).expect("snappy input within its limits");
        out.extend_from_slice(&(n as u32).to_be_bytes());
        out.extend_from_slice(&block[..n]);
    }
    out
}

fn xerial_decompress(data: &[u8], limit: usize) -> Result<Vec<u8>, BatchError> {
    let bad = |what: &str| BatchError::Decompress(format!("snappy (xerial): {what}"));
    let mut rest = data.get(XERIAL_HEADER.len()..).ok_or_else(|| bad("header cut short"))?;
    let mut out = Vec::new();
    let mut dec = snap::raw::Decoder::new();
    while !rest.is_empty() {
        let len = rest.get(..4).ok_or_else(|| bad("block length cut short"))?;
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let block = rest.get(4..4 + len).ok_or_else(|| bad("block cut short"))?;
        let size = snap::raw::decompress_len(block).map_err(|e| bad(&e.to_string()))?;
        if out.len() + size > limit {
            return Err(bad(&format!("data expands beyond the {limit}-byte limit")));
        }
        let at = out.len();
        out.resize(at + size, 0);
        dec.decompress(block, &mut out[at..]).map_err(|e| bad(&e.to_string()))?;
        rest = &rest[4 + len..];
    }
    Ok(out)
}

fn snappy_block_decompress(data: &[u8], limit: usize) -> Result<Vec<u8>, BatchError> {
    let size = snap::raw::decompress_len(data).map_err(|e| BatchError::Decompress(format!("snappy: {e}")))?;
    if size > limit {
        return Err(BatchError::Decompress(format!(
            "snappy block claims {size} bytes, more than the {limit}-byte limit"
        )));
    }
    snap::raw::Decoder::new().decompress_vec(data).map_err(|e| BatchError::Decompress(format!("snappy: {e}")))
}

/// The lz4 format of batches written before the Kafka listener: one block
/// with the uncompressed size as a 4-byte little-endian prefix.
fn legacy_lz4_block_decompress(data: &[u8], limit: usize) -> Result<Vec<u8>, BatchError> {
    let Some(prefix) = data.get(..4) else {
        return Err(BatchError::Decompress("lz4 data is neither a frame nor a sized block".into()));
    };
    let size = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    if size > limit {
        return Err(BatchError::Decompress(format!(
            "lz4 block claims {size} bytes, more than the {limit}-byte limit"
        )));
    }
    lz4_flex::block::decompress(&data[4..], size).map_err(|e| BatchError::Decompress(e.to_string()))
}

impl std::str::FromStr for Compression {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Compression::None),
            "gzip" => Ok(Compression::Gzip),
            "snappy" => Ok(Compression::Snappy),
            "lz4" => Ok(Compression::Lz4),
            "zstd" => Ok(Compression::Zstd),
            other => Err(format!("unknown compression '{other}' (none, gzip, snappy, lz4, zstd)")),
        }
    }
}

/// The parsed fixed header of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

fn be_i32(b: &[u8], at: usize) -> i32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    i32::from_be_bytes(a)
}

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}

impl BatchHeader {
    /// Parses the fixed header at the start of `buf` without checking the CRC
    /// or that the whole batch is present.
    pub fn parse(buf: &[u8]) -> Result<Self, BatchError> {
        if buf.len() < HEADER_LEN {
            return Err(BatchError::Truncated { needed: HEADER_LEN, available: buf.len() });
        }
        let header = BatchHeader {
            base_offset: be_i64(buf, 0),
            batch_length: be_i32(buf, LENGTH_AT),
            leader_epoch: be_i32(buf, LEADER_EPOCH_AT),
            magic: buf[MAGIC_AT] as i8,
            crc: be_i32(buf, CRC_AT) as u32,
            attributes: be_i16(buf, ATTRIBUTES_AT),
            last_offset_delta: be_i32(buf, LAST_OFFSET_DELTA_AT),
            base_timestamp: be_i64(buf, BASE_TIMESTAMP_AT),
            max_timestamp: be_i64(buf, MAX_TIMESTAMP_AT),
            producer_id: be_i64(buf, PRODUCER_ID_AT),
            producer_epoch: be_i16(buf, PRODUCER_EPOCH_AT),
            base_sequence: be_i32(buf, BASE_SEQUENCE_AT),
            record_count: be_i32(buf, RECORD_COUNT_AT),
        };
        if header.magic != MAGIC {
            return Err(BatchError::BadMagic(header.magic));
        }
        if (header.batch_length as i64) < (HEADER_LEN - LOG_OVERHEAD) as i64 {
            return Err(BatchError::Invalid("batch_length is smaller than the header"));
        }
        Ok(header)
    }

    /// Whole size of the batch in bytes, header included.
    pub fn total_len(&self) -> usize {
        LOG_OVERHEAD + self.batch_length as usize
    }

    /// Offset of the last record.
    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }

    /// Offset the record after this batch will get.
    pub fn next_offset(&self) -> i64 {
        self.last_offset() + 1
    }

    pub fn compression(&self) -> Result<Compression, BatchError> {
        Compression::from_id(self.attributes & COMPRESSION_MASK)
    }

    /// True when the broker, not the producer, set the timestamps.
    pub fn log_append_time(&self) -> bool {
        self.attributes & TIMESTAMP_TYPE_BIT != 0
    }
}

/// Checks one complete batch (exactly `buf`): header sanity, length and CRC32C.
///
/// The records themselves are not decoded: the broker stores batches as they
/// arrive, and the CRC already covers every record byte.
pub fn verify(buf: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = BatchHeader::parse(buf)?;
    if header.total_len() != buf.len() {
        return Err(BatchError::Invalid("batch_length does not match the batch's size"));
    }
    let computed = crc32c::crc32c(&buf[ATTRIBUTES_AT..]);
    if computed != header.crc {
        return Err(BatchError::CrcMismatch { stored: header.crc, computed });
    }
    header.compression()?;
    if header.record_count <= 0 {
        return Err(BatchError::Invalid("a batch must hold at least one record"));
    }
    // Compaction removes records but keeps offsets, so a stored batch may
    // hold fewer records than its offset span.
    if header.last_offset_delta < header.record_count - 1 {
        return Err(BatchError::Invalid("last_offset_delta is smaller than record_count - 1"));
    }
    if header.max_timestamp < header.base_timestamp {
        return Err(BatchError::Invalid("max_timestamp is before base_timestamp"));
    }
    Ok(header)
}

/// True when `batch` is lz4-compressed in the old block format (see the
/// module docs), which Kafka clients cannot read.
pub fn is_legacy_lz4(batch: &[u8]) -> bool {
    let Ok(header) = BatchHeader::parse(batch) else { return false };
    header.compression() == Ok(Compression::Lz4)
        && batch.get(HEADER_LEN..HEADER_LEN + 4).is_some_and(|m| m != LZ4_FRAME_MAGIC)
}

/// `batches` (concatenated, as a fetch returns them) with every old
/// lz4-block batch re-compressed as an lz4 frame and its CRC recomputed, so
/// a Kafka client can read data written before the frame format; `None`
/// when there is none (the common case: the bytes go out untouched). Offsets,
/// epochs, timestamps, producer fields and records are unchanged. A batch
/// that does not decode, and anything after it, is passed on as it is.
pub fn reframe_legacy_lz4(batches: &[u8]) -> Option<Vec<u8>> {
    let mut parts: Vec<&[u8]> = Vec::new();
    let mut whole = 0;
    for b in Batches::new(batches) {
        match b {
            Ok((_, bytes)) => {
                whole += bytes.len();
                parts.push(bytes);
            }
            Err(_) => break,
        }
    }
    if !parts.iter().any(|b| is_legacy_lz4(b)) {
        return None;
    }
    let mut out = Vec::with_capacity(batches.len() + 64);
    for b in parts {
        match reframe_one(b) {
            Some(new) => out.extend_from_slice(&new),
            None => out.extend_from_slice(b),
        }
    }
    out.extend_from_slice(&batches[whole..]);
    Some(out)
}

fn reframe_one(batch: &[u8]) -> Option<Vec<u8>> {
    if !is_legacy_lz4(batch) {
        return None;
    }
    let raw = legacy_lz4_block_decompress(&batch[HEADER_LEN..], MAX_UNCOMPRESSED).ok()?;
    let mut out = batch[..HEADER_LEN].to_vec();
    out.extend_from_slice(&Compression::Lz4.compress(&raw));
    let batch_length = (out.len() - LOG_OVERHEAD) as i32;
    out[LENGTH_AT..LENGTH_AT + 4].copy_from_slice(&batch_length.to_be_bytes());
    let crc = crc32c::crc32c(&out[ATTRIBUTES_AT..]);
    out[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    Some(out)
}

/// Stamps the broker-assigned base offset (outside the CRC).
pub fn set_base_offset(buf: &mut [u8], base_offset: i64) {
    buf[..8].copy_from_slice(&base_offset.to_be_bytes());
}

/// Stamps the leader epoch (outside the CRC).
pub fn set_leader_epoch(buf: &mut [u8], epoch: i32) {
    buf[LEADER_EPOCH_AT..LEADER_EPOCH_AT + 4].copy_from_slice(&epoch.to_be_bytes());
}

/// Splits concatenated batches by their length fields, without checking CRCs.
/// Yields `(header, whole batch)`; stops with an error at a batch that is
/// cut short or malformed.
pub struct Batches<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Batches<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Batches { buf, pos: 0 }
    }

    /// Bytes consumed by the batches yielded so far.
    pub fn position(&self) -> usize {
        self.pos
    }
}

impl<'a> Iterator for Batches<'a> {
    type Item = Result<(BatchHeader, &'a [u8]), BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = &self.buf[self.pos..];
        if rest.is_empty() {
            return None;
        }
        let header = match BatchHeader::parse(rest) {
            Ok(h) => h,
            Err(e) => {
                self.pos = self.buf.len();
                return Some(Err(e));
            }
        };
        let len = header.total_len();
        if len > rest.len() {
            self.pos = self.buf.len();
            return Some(Err(BatchError::Truncated { needed: len, available: rest.len() }));
        }
        self.pos += len;
        Some(Ok((header, &rest[..len])))
    }
}

/// One header of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordHeader {
    pub key: String,
    pub value: Option<Bytes>,
}

/// One decoded record. Key and value are slices of the fetched buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<RecordHeader>,
}

/// Decodes the records of one complete batch (`batch` is exactly one batch,
/// typically a slice of a fetch response). Decompresses when needed.
pub fn records(batch: &Bytes) -> Result<RecordIter, BatchError> {
    let header = BatchHeader::parse(batch)?;
    if header.total_len() > batch.len() {
        return Err(BatchError::Truncated { needed: header.total_len(), available: batch.len() });
    }
    let section = batch.slice(HEADER_LEN..header.total_len());
    let data = match header.compression()? {
        Compression::None => section,
        codec => Bytes::from(codec.decompress(&section, MAX_UNCOMPRESSED)?),
    };
    Ok(RecordIter { data, pos: 0, header, remaining: header.record_count.max(0) })
}

/// Iterator over the records of one batch; see [`records`].
pub struct RecordIter {
    data: Bytes,
    pos: usize,
    header: BatchHeader,
    remaining: i32,
}

impl RecordIter {
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    fn read_bytes(&mut self, end: usize) -> Result<Option<Bytes>, BatchError> {
        let len = get_varlong(&self.data[..end], &mut self.pos)?;
        if len < 0 {
            return Ok(None);
        }
        let len = len as usize;
        if len > end - self.pos {
            return Err(BatchError::Invalid("record field runs past the record"));
        }
        let out = self.data.slice(self.pos..self.pos + len);
        self.pos += len;
        Ok(Some(out))
    }

    fn decode_one(&mut self) -> Result<Record, BatchError> {
        let len = get_varlong(&self.data, &mut self.pos)?;
        if len < 1 || len as usize > self.data.len() - self.pos {
            return Err(BatchError::Invalid("record length runs past the batch"));
        }
        let end = self.pos + len as usize;
        self.pos += 1; // record attributes: unused
        let ts_delta = get_varlong(&self.data[..end], &mut self.pos)?;
        let offset_delta = get_varlong(&self.data[..end], &mut self.pos)?;
        let key = self.read_bytes(end)?;
        let value = self.read_bytes(end)?;
        let count = get_varlong(&self.data[..end], &mut self.pos)?;
        if count < 0 || count as usize > end - self.pos {
            return Err(BatchError::Invalid("impossible header count"));
        }
        let mut headers = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let key = self.read_bytes(end)?.ok_or(BatchError::Invalid("record header with a null key"))?;
            let key = String::from_utf8(key.to_vec())
                .map_err(|_| BatchError::Invalid("record header key is not UTF-8"))?;
            let value = self.read_bytes(end)?;
            headers.push(RecordHeader { key, value });
        }
        if self.pos != end {
            return Err(BatchError::Invalid("record length disagrees with its fields"));
        }
        Ok(Record {
            offset: self.header.base_offset.wrapping_add(offset_delta),
            timestamp: if self.header.log_append_time() {
                self.header.max_timestamp
            } else {
                self.header.base_timestamp.wrapping_add(ts_delta)
            },
            key,
            value,
            headers,
        })
    }
}

impl Iterator for RecordIter {
    type Item = Result<Record, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining <= 0 {
            return None;
        }
        self.remaining -= 1;
        let record = self.decode_one();
        if record.is_err() {
            self.remaining = 0;
        }
        Some(record)
    }
}

/// Producer identity stamped on a batch (idempotent producers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerStamp {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
}

impl Default for ProducerStamp {
    fn default() -> Self {
        ProducerStamp { producer_id: -1, producer_epoch: -1, base_sequence: -1 }
    }
}

/// Builds one batch record by record, encoding straight into one buffer (no
/// allocation per record).
pub struct BatchBuilder {
    buf: Vec<u8>,
    compression: Compression,
    base_timestamp: i64,
    max_timestamp: i64,
    count: i32,
    last_delta: i32,
    producer: ProducerStamp,
}

impl BatchBuilder {
    pub fn new(compression: Compression, base_timestamp: i64) -> Self {
        Self::with_capacity(compression, base_timestamp, 1024)
    }

    /// `capacity`: expected bytes of records, to size the buffer once.
    pub fn with_capacity(compression: Compression, base_timestamp: i64, capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(HEADER_LEN + capacity);
        buf.resize(HEADER_LEN, 0);
        BatchBuilder {
            buf,
            compression,
            base_timestamp,
            max_timestamp: base_timestamp,
            count: 0,
            last_delta: -1,
            producer: ProducerStamp::default(),
        }
    }

    pub fn set_producer(&mut self, producer: ProducerStamp) {
        self.producer = producer;
    }

    pub fn record_count(&self) -> i32 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes the batch takes before compression.
    pub fn size(&self) -> usize {
        self.buf.len()
    }

    /// Bytes a record would add; lets a producer decide to close a batch first.
    pub fn record_size(
        &self,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, Option<&[u8]>)],
    ) -> usize {
        let body = self.body_len(self.last_delta + 1, timestamp, key, value, headers);
        varlong_len(body as i64) + body
    }

    fn body_len(
        &self,
        offset_delta: i32,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, Option<&[u8]>)],
    ) -> usize {
        fn field(b: Option<&[u8]>) -> usize {
            match b {
                Some(b) => varlong_len(b.len() as i64) + b.len(),
                None => 1,
            }
        }
        let mut n = 1
            + varlong_len(timestamp.wrapping_sub(self.base_timestamp))
            + varlong_len(i64::from(offset_delta))
            + field(key)
            + field(value)
            + varlong_len(headers.len() as i64);
        for (k, v) in headers {
            n += field(Some(k.as_bytes())) + field(*v);
        }
        n
    }

    /// Appends a record; returns its offset delta within the batch.
    pub fn append(
        &mut self,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, Option<&[u8]>)],
    ) -> i32 {
        self.append_at(self.last_delta + 1, timestamp, key, value, headers)
    }

    /// Appends a record with an explicit offset delta, greater than the last
    /// one (compaction re-encodes batches with gaps, keeping every offset).
    pub fn append_at(
        &mut self,
        offset_delta: i32,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, Option<&[u8]>)],
    ) -> i32 {
        debug_assert!(offset_delta > self.last_delta);
        fn put_field(out: &mut Vec<u8>, b: Option<&[u8]>) {
            match b {
                Some(b) => {
                    put_varlong(out, b.len() as i64);
                    out.extend_from_slice(b);
                }
                None => put_varlong(out, -1),
            }
        }
        let body = self.body_len(offset_delta, timestamp, key, value, headers);
        let out = &mut self.buf;
        put_varlong(out, body as i64);
        out.push(0);
        put_varlong(out, timestamp.wrapping_sub(self.base_timestamp));
        put_varlong(out, i64::from(offset_delta));
        put_field(out, key);
        put_field(out, value);
        put_varlong(out, headers.len() as i64);
        for (k, v) in headers {
            put_field(out, Some(k.as_bytes()));
            put_field(out, *v);
        }
        self.max_timestamp = self.max_timestamp.max(timestamp);
        self.count += 1;
        self.last_delta = offset_delta;
        offset_delta
    }

    /// Finishes the batch: compresses the records and writes header and CRC.
    /// The base offset is 0 and the leader epoch -1 until a broker stamps them.
    pub fn build(self) -> Bytes {
        let BatchBuilder { mut buf, compression, base_timestamp, max_timestamp, count, last_delta, producer } =
            self;
        if compression != Compression::None {
            let packed = compression.compress(&buf[HEADER_LEN..]);
            buf.truncate(HEADER_LEN);
            buf.extend_from_slice(&packed);
        }
        let batch_length = (buf.len() - LOG_OVERHEAD) as i32;
        buf[0..8].copy_from_slice(&0i64.to_be_bytes());
        buf[LENGTH_AT..LENGTH_AT + 4].copy_from_slice(&batch_length.to_be_bytes());
        buf[LEADER_EPOCH_AT..LEADER_EPOCH_AT + 4].copy_from_slice(&(-1i32).to_be_bytes());
        buf[MAGIC_AT] = MAGIC as u8;
        buf[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&compression.id().to_be_bytes());
        let last_delta = last_delta.max(0);
        buf[LAST_OFFSET_DELTA_AT..LAST_OFFSET_DELTA_AT + 4].copy_from_slice(&last_delta.to_be_bytes());
        buf[BASE_TIMESTAMP_AT..BASE_TIMESTAMP_AT + 8].copy_from_slice(&base_timestamp.to_be_bytes());
        buf[MAX_TIMESTAMP_AT..MAX_TIMESTAMP_AT + 8].copy_from_slice(&max_timestamp.to_be_bytes());
        buf[PRODUCER_ID_AT..PRODUCER_ID_AT + 8].copy_from_slice(&producer.producer_id.to_be_bytes());
        buf[PRODUCER_EPOCH_AT..PRODUCER_EPOCH_AT + 2].copy_from_slice(&producer.producer_epoch.to_be_bytes());
        buf[BASE_SEQUENCE_AT..BASE_SEQUENCE_AT + 4].copy_from_slice(&producer.base_sequence.to_be_bytes());
        buf[RECORD_COUNT_AT..RECORD_COUNT_AT + 4].copy_from_slice(&count.to_be_bytes());
        let crc = crc32c::crc32c(&buf[ATTRIBUTES_AT..]);
        buf[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        Bytes::from(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    struct Input {
        timestamp: i64,
        key: Option<Vec<u8>>,
        value: Option<Vec<u8>>,
        headers: Vec<(String, Option<Vec<u8>>)>,
    }

    fn input() -> impl Strategy<Value = Input> {
        (
            0i64..4_000_000_000_000,
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
            proptest::collection::vec(
                ("[a-z]{0,8}", proptest::option::of(proptest::collection::vec(any::<u8>(), 0..10))),
                0..3,
            ),
        )
            .prop_map(|(timestamp, key, value, headers)| Input { timestamp, key, value, headers })
    }

    fn compression() -> impl Strategy<Value = Compression> {
        proptest::sample::select(Compression::ALL.to_vec())
    }

    fn build(inputs: &[Input], compression: Compression) -> Bytes {
        let base = inputs.first().map_or(0, |i| i.timestamp);
        let mut b = BatchBuilder::new(compression, base);
        for i in inputs {
            let headers: Vec<(&str, Option<&[u8]>)> =
                i.headers.iter().map(|(k, v)| (k.as_str(), v.as_deref())).collect();
            let before = b.size();
            let expect = b.record_size(i.timestamp, i.key.as_deref(), i.value.as_deref(), &headers);
            b.append(i.timestamp, i.key.as_deref(), i.value.as_deref(), &headers);
            assert_eq!(b.size() - before, expect);
        }
        b.build()
    }

    proptest! {
        #[test]
        fn batches_round_trip(inputs in proptest::collection::vec(input(), 1..30),
                              compression in compression(),
                              base_offset in 0i64..1 << 40) {
            let built = build(&inputs, compression);
            let mut stored = built.to_vec();
            set_base_offset(&mut stored, base_offset);
            set_leader_epoch(&mut stored, 7);
            let header = verify(&stored).expect("built batch verifies after stamping");
            prop_assert_eq!(header.record_count as usize, inputs.len());
            prop_assert_eq!(header.base_offset, base_offset);
            prop_assert_eq!(header.leader_epoch, 7);
            prop_assert_eq!(header.compression().unwrap(), compression);
            let max_ts = inputs.iter().map(|i| i.timestamp).max().unwrap();
            prop_assert_eq!(header.max_timestamp, max_ts.max(inputs[0].timestamp));
            let stored = Bytes::from(stored);
            let decoded: Vec<Record> = records(&stored).unwrap().collect::<Result<_, _>>().unwrap();
            prop_assert_eq!(decoded.len(), inputs.len());
            for (n, (r, i)) in decoded.iter().zip(&inputs).enumerate() {
                prop_assert_eq!(r.offset, base_offset + n as i64);
                prop_assert_eq!(r.timestamp, i.timestamp);
                prop_assert_eq!(r.key.as_deref(), i.key.as_deref());
                prop_assert_eq!(r.value.as_deref(), i.value.as_deref());
                prop_assert_eq!(r.headers.len(), i.headers.len());
                for (h, (k, v)) in r.headers.iter().zip(&i.headers) {
                    prop_assert_eq!(&h.key, k);
                    prop_assert_eq!(h.value.as_deref(), v.as_deref());
                }
            }
        }

        #[test]
        fn any_flipped_byte_after_the_offset_fields_is_caught(
            inputs in proptest::collection::vec(input(), 1..5),
            compression in compression(),
            pos in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let built = build(&inputs, compression);
            let mut bad = built.to_vec();
            // base_offset and leader_epoch are outside the CRC by design; the
            // length field is checked against the size.
            let at = 8 + pos.index(bad.len() - 8);
            prop_assume!(!(LEADER_EPOCH_AT..LEADER_EPOCH_AT + 4).contains(&at));
            bad[at] ^= flip;
            prop_assert!(verify(&bad).is_err());
        }

        #[test]
        fn decoding_garbage_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = verify(&buf);
            for b in Batches::new(&buf) {
                let Ok((_, slice)) = b else { break };
                if let Ok(it) = records(&Bytes::copy_from_slice(slice)) {
                    for r in it { if r.is_err() { break } }
                }
            }
        }

        #[test]
        fn decoding_a_corrupted_valid_batch_never_panics(
            inputs in proptest::collection::vec(input(), 1..5),
            compression in compression(),
            pos in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let mut bad = build(&inputs, compression).to_vec();
            let at = HEADER_LEN.min(bad.len() - 1) + pos.index(bad.len() - HEADER_LEN.min(bad.len() - 1));
            if at < bad.len() { bad[at] ^= flip; }
            if let Ok(it) = records(&Bytes::from(bad)) {
                for r in it { if r.is_err() { break } }
            }
        }
    }

    #[test]
    fn batches_split_concatenated_input() {
        let a = build(
            &[Input { timestamp: 5, key: None, value: Some(b"a".to_vec()), headers: vec![] }],
            Compression::None,
        );
        let b = build(
            &[Input { timestamp: 6, key: Some(b"k".to_vec()), value: None, headers: vec![] }],
            Compression::Lz4,
        );
        let mut both = a.to_vec();
        both.extend_from_slice(&b);
        let split: Vec<_> = Batches::new(&both).collect::<Result<_, _>>().unwrap();
        assert_eq!(split.len(), 2);
        assert_eq!(split[0].1, &a[..]);
        assert_eq!(split[1].1, &b[..]);
        // A cut-short tail is reported, not silently dropped.
        let cut = &both[..both.len() - 1];
        let mut it = Batches::new(cut);
        assert!(it.next().unwrap().is_ok());
        assert!(matches!(it.next(), Some(Err(BatchError::Truncated { .. }))));
    }

    #[test]
    fn lz4_size_bomb_is_refused() {
        let mut b = BatchBuilder::new(Compression::Lz4, 0);
        b.append(0, None, Some(b"x"), &[]);
        let mut bad = b.build().to_vec();
        bad[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = records(&Bytes::from(bad)).err().unwrap();
        assert!(matches!(err, BatchError::Decompress(_)), "{err}");
    }

    fn one_record(compression: Compression, value: &[u8]) -> Bytes {
        let mut b = BatchBuilder::new(compression, 0);
        b.append(0, Some(b"k"), Some(value), &[("h", Some(b"v"))]);
        b.build()
    }

    fn reseal(mut buf: Vec<u8>) -> Bytes {
        let batch_length = (buf.len() - LOG_OVERHEAD) as i32;
        buf[LENGTH_AT..LENGTH_AT + 4].copy_from_slice(&batch_length.to_be_bytes());
        let crc = crc32c::crc32c(&buf[ATTRIBUTES_AT..]);
        buf[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        Bytes::from(buf)
    }

    /// The same batch with its records section replaced by `section`.
    fn with_section(compression: Compression, value: &[u8], section: &[u8]) -> Bytes {
        let mut buf = one_record(compression, value)[..HEADER_LEN].to_vec();
        buf.extend_from_slice(section);
        reseal(buf)
    }

    fn raw_section(value: &[u8]) -> Vec<u8> {
        one_record(Compression::None, value)[HEADER_LEN..].to_vec()
    }

    fn only_value(batch: &Bytes) -> Vec<u8> {
        let recs: Vec<Record> = records(batch).unwrap().collect::<Result<_, _>>().unwrap();
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].key.as_deref(), Some(&b"k"[..]));
        assert_eq!(recs[0].headers[0].value.as_deref(), Some(&b"v"[..]));
        recs[0].value.as_ref().unwrap().to_vec()
    }

    #[test]
    fn lz4_is_a_frame_with_independent_blocks() {
        let batch = one_record(Compression::Lz4, &[9u8; 200_000]);
        let section = &batch[HEADER_LEN..];
        assert_eq!(&section[..4], &[0x04, 0x22, 0x4d, 0x18], "LZ4 frame magic");
        let flg = section[4];
        assert_eq!(flg >> 6, 1, "frame version 01");
        assert_ne!(flg & 0x20, 0, "block independence flag set (Kafka's Java reader needs it)");
        assert_eq!(flg & 0x10, 0, "no block checksums");
        assert_eq!(only_value(&batch), vec![9u8; 200_000]);
    }

    #[test]
    fn batches_from_before_the_frame_format_still_read() {
        let value = b"written by an older broker".repeat(50);
        let old = lz4_flex::block::compress_prepend_size(&raw_section(&value));
        let batch = with_section(Compression::Lz4, &value, &old);
        verify(&batch).unwrap();
        assert_eq!(only_value(&batch), value);
    }

    #[test]
    fn old_lz4_block_batches_are_reframed_for_kafka_clients_and_nothing_else_is() {
        let value = b"old".repeat(100);
        let old = lz4_flex::block::compress_prepend_size(&raw_section(&value));
        let mut legacy = with_section(Compression::Lz4, &value, &old).to_vec();
        set_base_offset(&mut legacy, 41);
        set_leader_epoch(&mut legacy, 3);
        let current = one_record(Compression::Lz4, b"new").to_vec();
        assert!(is_legacy_lz4(&legacy) && !is_legacy_lz4(&current));
        assert_eq!(reframe_legacy_lz4(&current), None, "current batches go out untouched");
        let mut fetched = current.clone();
        fetched.extend_from_slice(&legacy);
        fetched.extend_from_slice(&legacy[..10]); // a cut-off tail, as fetches may end
        let out = reframe_legacy_lz4(&fetched).unwrap();
        assert_eq!(&out[..current.len()], &current[..]);
        let tail = &out[out.len() - 10..];
        assert_eq!(tail, &legacy[..10]);
        let upgraded = &out[current.len()..out.len() - 10];
        let header = verify(upgraded).unwrap();
        assert_eq!((header.base_offset, header.leader_epoch), (41, 3));
        assert_eq!(&upgraded[HEADER_LEN..HEADER_LEN + 4], &LZ4_FRAME_MAGIC);
        assert_eq!(only_value(&Bytes::copy_from_slice(upgraded)), value);
    }

    #[test]
    fn snappy_is_written_in_xerial_framing_and_read_in_both() {
        let value: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let batch = one_record(Compression::Snappy, &value);
        assert_eq!(&batch[HEADER_LEN..HEADER_LEN + 16], &XERIAL_HEADER);
        assert_eq!(only_value(&batch), value);
        // librdkafka writes one raw snappy block.
        let raw = snap::raw::Encoder::new().compress_vec(&raw_section(&value)).unwrap();
        assert_eq!(only_value(&with_section(Compression::Snappy, &value, &raw)), value);
    }

    #[test]
    fn gzip_reads_what_a_standard_encoder_wrote() {
        use std::io::Write;
        let value = b"gzip from elsewhere".repeat(20);
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&raw_section(&value)).unwrap();
        let batch = with_section(Compression::Gzip, &value, &enc.finish().unwrap());
        assert_eq!(only_value(&batch), value);
    }

    #[test]
    fn every_codec_refuses_a_decompression_bomb() {
        let big = vec![0u8; 4096];
        for codec in Compression::ALL {
            if codec == Compression::None {
                continue;
            }
            let packed = codec.compress(&big);
            let err = codec.decompress(&packed, 1000).unwrap_err();
            assert!(matches!(err, BatchError::Decompress(_)), "{codec:?}: {err}");
            assert_eq!(codec.decompress(&packed, 4096).unwrap(), big, "{codec:?}");
        }
        let raw = snap::raw::Encoder::new().compress_vec(&big).unwrap();
        assert!(Compression::Snappy.decompress(&raw, 1000).is_err());
    }

    #[test]
    fn codec_names_parse() {
        for (name, codec) in
            [("gzip", Compression::Gzip), ("snappy", Compression::Snappy), ("lz4", Compression::Lz4)]
        {
            assert_eq!(name.parse::<Compression>().unwrap(), codec);
            assert_eq!(Compression::from_id(codec.id()).unwrap(), codec);
        }
        assert!(Compression::from_id(5).is_err());
    }
}
