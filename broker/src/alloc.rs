//! The broker's global allocator: the system allocator, except that a
//! single allocation of [`HUGE`] bytes or more is a lazily backed anonymous
//! mapping (`MAP_NORESERVE`) instead of memory the kernel must promise.
//!
//! Why: the Kafka message decoders (`kafka-protocol`) size a vector from an
//! array's length field before reading its elements, so a 20-byte request
//! claiming 2^31 topics asks for ~150 GB up front. The system allocator
//! refuses, and Rust aborts the process on a failed allocation: any client
//! could kill the broker. With a lazy mapping the reservation succeeds, the
//! decoder runs out of input at the first missing element, the request is
//! refused (its connection closed) and the mapping is returned unused. No
//! real allocation of the broker comes near this size (record batches,
//! fetch responses and requests are capped far below it), so nothing else
//! takes the mapped path.

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations at least this large are mapped lazily.
pub const HUGE: usize = 1 << 30;

/// Page alignment the mapping guarantees.
const PAGE: usize = 4096;

pub struct LazyHuge;

fn mapped(layout: &Layout) -> bool {
    layout.size() >= HUGE && layout.align() <= PAGE
}

// SAFETY: every pointer handed out is either the system allocator's (and
// goes back to it) or a fresh private anonymous mapping of exactly
// `layout.size()` bytes, page-aligned and zero-filled, unmapped with the
// same size; `mapped` decides which by the layout alone, which callers must
// pass unchanged to `dealloc`.
unsafe impl GlobalAlloc for LazyHuge {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !mapped(&layout) {
            return unsafe { System.alloc(layout) };
        }
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                layout.size(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            std::ptr::null_mut()
        } else {
            p.cast()
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if mapped(&layout) {
            // Anonymous mappings are zero-filled.
            unsafe { self.alloc(layout) }
        } else {
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if mapped(&layout) {
            unsafe { libc::munmap(ptr.cast(), layout.size()) };
        } else {
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size` with this alignment is a
        // valid layout.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if !mapped(&layout) && !mapped(&new_layout) {
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_huge_reservation_that_is_never_filled_does_not_abort() {
        // 1 TB: far more than the machine has; only the pages touched count.
        let mut v: Vec<u64> = Vec::with_capacity(1 << 37);
        v.push(7);
        assert_eq!(v[0], 7);
        drop(v);
        let mut small: Vec<u8> = Vec::with_capacity(10);
        small.extend_from_slice(b"still fine");
        assert_eq!(&small[..], b"still fine");
    }
}
