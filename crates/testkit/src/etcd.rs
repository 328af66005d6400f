//! A real etcd for tests (owned by the etcd-store work).
