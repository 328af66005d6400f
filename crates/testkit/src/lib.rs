//! Test support shared by the workspace's tests: real etcd and systemd (nspawn) processes,
//! started on free loopback ports in their own temp dirs and killed by PID when dropped.

pub mod etcd;
pub mod nspawn;
