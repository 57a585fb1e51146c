//! Whatever bytes arrive (from a producer, a segment file, a fetch), the
//! batch decoder returns an error instead of panicking, looping or
//! allocating without bound.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tributary_proto::batch::{records, verify, Batches};

fuzz_target!(|data: &[u8]| {
    let _ = verify(data);
    let all = Bytes::copy_from_slice(data);
    let mut pos = 0;
    for batch in Batches::new(data) {
        let Ok((_, slice)) = batch else { break };
        let one = all.slice(pos..pos + slice.len());
        pos += slice.len();
        if let Ok(iter) = records(&one) {
            for r in iter {
                if r.is_err() {
                    break;
                }
            }
        }
    }
});
