//! Custom resource types (filled by the operator issue).
