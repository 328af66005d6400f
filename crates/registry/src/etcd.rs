//! The etcd v3 [`crate::Store`] (owned by the etcd-store work).
