//! Test support shared by the workspace's tests: real etcd and systemd (nspawn) processes,
//! started on free loopback ports in their own temp dirs and killed by PID when dropped.
//!
//! ```no_run
//! let etcd = testkit::etcd::EtcdCluster::single()?;
//! println!("etcd at {}", etcd.endpoints().join(","));
//! // dropped: the etcd process is killed and its data dir removed
//! # Ok::<(), anyhow::Error>(())
//! ```

pub mod chromedriver;
pub mod etcd;
pub mod nspawn;
pub mod pki;
pub mod sshd;

/// Reports that a test cannot run here because `why` (a missing prerequisite: etcd, nspawn,
/// root). Outside CI the test prints the reason and skips; with `CI=true` a skip would let a
/// green run hide a test that never ran, so this panics instead.
pub fn skip(why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true, but this test cannot run here: {why}");
    }
    println!("skipped: {why}");
}
