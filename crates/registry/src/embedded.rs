//! The embedded single-machine [`crate::Store`] on redb (owned by the embedded-store work).
