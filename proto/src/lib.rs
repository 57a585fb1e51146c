//! Tributary's wire formats.
//!
//! * [`v1`]: the gRPC API generated from `proto/tributary.proto` (services
//!   `Log` and `Admin`).
//! * [`batch`]: the record batch format. It is the unit a producer sends, the
//!   broker stores in its segment files and a consumer receives, byte for
//!   byte, so it lives here beside the API and is shared by broker and client.
//! * [`varint`]: the zig-zag variable-length integers the batch format uses.

pub mod batch;
pub mod provenance;
pub mod varint;

/// The gRPC API, generated from `proto/tributary.proto`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("tributary.v1");
}

/// Special `timestamp` values of a ListOffsets request.
pub mod offset_spec {
    /// The first offset still stored.
    pub const EARLIEST: i64 = -2;
    /// The offset the next appended record will get.
    pub const LATEST: i64 = -1;
}
