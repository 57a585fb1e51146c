//! The emergency disk reserve, so a full disk never stops the broker from
//! starting, serving reads, deleting topics or running retention.
//!
//! A ballast file of `disk_reserve_bytes` lives in the data directory
//! (CockroachDB keeps one for the same reason). When a write fails with
//! ENOSPC the broker deletes it, which gives RocksDB and the clean-up paths
//! room to work, and refuses client produces ("disk full") until free space
//! is back above twice the reserve; then the ballast is re-created and
//! produces are accepted again. At start, a ballast on a disk with less free
//! space than the reserve is removed before anything else opens.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};

pub const BALLAST_FILE: &str = "reserve.ballast";

pub struct DiskReserve {
    dir: PathBuf,
    bytes: u64,
    /// Set when the disk filled: client produces are refused.
    full: AtomicBool,
}

/// Free bytes on the file system holding `dir` (for an unprivileged user).
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    statvfs(dir).map(|(free, _)| free)
}

/// `(free, total)` bytes of the file system holding `dir`.
fn statvfs(dir: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out-pointer.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let unit = st.f_frsize as u64;
    Ok((st.f_bavail as u64 * unit, st.f_blocks as u64 * unit))
}

impl DiskReserve {
    /// Opens the reserve of a data directory; removes the ballast first
    /// when the disk is already short of space (a broker must start).
    /// The reserve is at most a tenth of the file system, so small disks
    /// (and tests on a small tmpfs) get one too.
    pub fn open(dir: &Path, bytes: u64) -> DiskReserve {
        let bytes = match statvfs(dir) {
            Ok((_, total)) => bytes.min(total / 10),
            Err(_) => bytes,
        };
        let r = DiskReserve { dir: dir.to_path_buf(), bytes, full: AtomicBool::new(false) };
        if r.path().exists() && free_bytes(dir).is_ok_and(|free| free < bytes) {
            tracing::warn!(dir = %dir.display(), "disk nearly full at start: releasing the emergency reserve");
            r.release();
            r.full.store(true, Ordering::Release);
        }
        r
    }

    fn path(&self) -> PathBuf {
        self.dir.join(BALLAST_FILE)
    }

    pub fn is_full(&self) -> bool {
        self.full.load(Ordering::Acquire)
    }

    /// Refuses client writes while the disk is full.
    pub fn check(&self) -> Result<()> {
        if self.is_full() {
            return Err(Error::DiskFull(format!(
                "the data directory {} is out of space (produces resume once {} bytes are free)",
                self.dir.display(),
                2 * self.bytes
            )));
        }
        Ok(())
    }

    /// A write hit ENOSPC: release the ballast and refuse client produces.
    pub fn on_full(&self) {
        if !self.full.swap(true, Ordering::AcqRel) {
            tracing::error!(dir = %self.dir.display(), "disk full: releasing the emergency reserve; produces are refused until space is freed");
            self.release();
        }
    }

    fn release(&self) {
        match std::fs::remove_file(self.path()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(error = %e, "removing the disk reserve"),
        }
    }

    /// Periodic: puts the ballast (back) in place when there is room, and
    /// ends the disk-full state once free space is above twice the reserve.
    pub fn maintain(&self) {
        if self.bytes == 0 {
            self.full.store(false, Ordering::Release);
            return;
        }
        let Ok(free) = free_bytes(&self.dir) else { return };
        let have = std::fs::metadata(self.path()).map(|m| m.len()).unwrap_or(0);
        if have >= self.bytes {
            if self.is_full() && free >= self.bytes {
                self.full.store(false, Ordering::Release);
            }
            return;
        }
        if free >= 2 * self.bytes {
            if let Err(e) = self.create() {
                tracing::warn!(error = %e, "creating the disk reserve");
                return;
            }
            if self.full.swap(false, Ordering::AcqRel) {
                tracing::info!(dir = %self.dir.display(), "disk space available again: produces accepted");
            }
        }
    }

    fn create(&self) -> std::io::Result<()> {
        use std::io::Write;
        let tmp = self.dir.join(format!("{BALLAST_FILE}.tmp"));
        let mut f = std::fs::File::create(&tmp)?;
        // Real blocks, not a sparse file: the space must actually be held.
        let chunk = vec![0u8; 1 << 20];
        let mut left = self.bytes;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            if let Err(e) = f.write_all(&chunk[..n]) {
                drop(f);
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
            left -= n as u64;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, self.path())
    }
}
