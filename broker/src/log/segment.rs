//! One segment file: `<partition dir>/<base offset, 20 digits>.log`, an
//! append-only run of record batches (format: `tributary_proto::batch`).
//!
//! Bytes below `size` never change while the segment is live (compaction
//! writes a new file and swaps it in), so readers read them without a lock,
//! through a shared file handle. File operations go through [`LogFs`].

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tributary_proto::batch::{BatchHeader, HEADER_LEN};

use super::fs::{self, LogFile, LogFs};

pub struct Segment {
    pub base_offset: i64,
    pub path: PathBuf,
    pub file: Arc<dyn LogFile>,
    /// Bytes of complete batches in the file.
    pub size: u64,
    /// Offset after the last record held (== `base_offset` when empty).
    pub next_offset: i64,
    /// Largest record timestamp held; `i64::MIN` when empty.
    pub max_timestamp: i64,
    /// Wall-clock ms of the first append, for `segment.ms`; None when empty.
    pub first_append_ms: Option<i64>,
}

pub fn file_name(base_offset: i64) -> String {
    format!("{base_offset:020}.log")
}

/// Base offset of a segment file name, or None for other files.
pub fn parse_file_name(name: &str) -> Option<i64> {
    let stem = name.strip_suffix(".log")?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

impl Segment {
    /// Creates an empty segment file and makes its directory entry durable.
    pub fn create(fs: &dyn LogFs, dir: &Path, base_offset: i64) -> io::Result<Segment> {
        let path = dir.join(file_name(base_offset));
        let file = fs.create(&path)?;
        fs.sync_dir(dir)?;
        Ok(Segment {
            base_offset,
            path,
            file,
            size: 0,
            next_offset: base_offset,
            max_timestamp: i64::MIN,
            first_append_ms: None,
        })
    }

    /// Opens an existing file; `next_offset` and `max_timestamp` are for the
    /// caller (recovery) to fill in.
    pub fn open(fs: &dyn LogFs, path: PathBuf, base_offset: i64) -> io::Result<Segment> {
        let file = fs.open(&path)?;
        let size = file.len()?;
        Ok(Segment {
            base_offset,
            path,
            file,
            size,
            next_offset: base_offset,
            max_timestamp: i64::MIN,
            first_append_ms: None,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// Writes whole batches at the end. `size` moves only when every byte
    /// was written; after a failure the caller cuts the file back.
    pub fn append(&mut self, data: &[u8]) -> io::Result<u64> {
        let pos = self.size;
        self.file.write_all_at(data, pos)?;
        self.size += data.len() as u64;
        Ok(pos)
    }

    /// Cuts the file to `size` bytes and fsyncs it.
    pub fn truncate(&mut self, size: u64) -> io::Result<()> {
        self.file.set_len(size)?;
        self.file.sync()?;
        self.size = size;
        Ok(())
    }
}

/// Reads up to `len` bytes at `pos` (fewer at the end of the file).
pub fn read_at(file: &dyn LogFile, pos: u64, len: usize) -> io::Result<Vec<u8>> {
    fs::read_exact_or_eof(file, pos, len)
}

/// Every batch header from `from` on, with its position, up to `end` or the
/// first position that holds no header: the walk recovery, re-indexing and
/// producer-state rebuilds share.
pub fn headers(
    file: &dyn LogFile,
    from: u64,
    end: u64,
) -> impl Iterator<Item = io::Result<(u64, BatchHeader)>> + '_ {
    let mut pos = Some(from);
    std::iter::from_fn(move || {
        let at = pos?;
        match header_at(file, at, end) {
            Ok(Some(h)) => {
                pos = Some(at + h.total_len() as u64);
                Some(Ok((at, h)))
            }
            Ok(None) => {
                pos = None;
                None
            }
            Err(e) => {
                pos = None;
                Some(Err(e))
            }
        }
    })
}

/// The batch header at `pos`, or None when fewer than a header's bytes remain
/// before `end` or the bytes there are not a batch header.
pub fn header_at(file: &dyn LogFile, pos: u64, end: u64) -> io::Result<Option<BatchHeader>> {
    if pos + HEADER_LEN as u64 > end {
        return Ok(None);
    }
    let buf = read_at(file, pos, HEADER_LEN)?;
    Ok(BatchHeader::parse(&buf).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip_and_sort() {
        assert_eq!(file_name(42), "00000000000000000042.log");
        assert_eq!(parse_file_name(&file_name(42)), Some(42));
        assert_eq!(parse_file_name("00000000000000000042.log.cleaned"), None);
        assert_eq!(parse_file_name("42.log"), None);
        assert!(file_name(9) < file_name(10));
    }
}
