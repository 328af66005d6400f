//! The embedded store on disk: one redb file holding the current keys, the leases and the
//! revision. Each batch of transactions is one redb write transaction, durable when `write`
//! returns (redb's default `Durability::Immediate` fsyncs on commit).
//!
//! History (past revisions) is not stored: it lives in memory only, so after a reopen the past
//! before the open reads as compacted.

use super::batch::Batch;
use crate::store::{KeyValue, LeaseId, Result, Revision, StoreError};
use redb::{Database, DatabaseError, ReadableDatabase, ReadableTable, TableDefinition};
use std::collections::BTreeMap;
use std::fmt::Display;
use std::path::{Path, PathBuf};

/// key -> create revision, mod revision, lease (i64 little-endian each), then the value.
const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
/// lease id -> TTL in seconds.
const LEASES: TableDefinition<i64, i64> = TableDefinition::new("leases");
/// "revision", "format".
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
const FORMAT: i64 = 1;
const HEADER: usize = 24;

/// The file name inside the store's directory.
pub const FILE_NAME: &str = "registry.redb";

pub(super) struct Disk {
    db: Database,
    path: PathBuf,
}

pub(super) struct Loaded {
    pub kv: BTreeMap<String, KeyValue>,
    pub leases: Vec<(LeaseId, i64)>,
    pub revision: Revision,
}

impl Disk {
    /// Opens (creating if needed) `dir/registry.redb` and reads it whole.
    pub fn open(dir: &Path) -> Result<(Disk, Loaded)> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Other(format!(
                "cannot create the embedded registry directory {}: {e}",
                dir.display()
            ))
        })?;
        let path = dir.join(FILE_NAME);
        // Every key is also held in memory, so redb's cache need not be large. The integrity
        // check turns a file damaged outside redb into an error instead of a panic.
        let db = redb::Builder::new()
            .set_cache_size(64 << 20)
            .set_check_integrity_on_open(true)
            .create(&path)
            .map_err(|e| match e {
                DatabaseError::DatabaseAlreadyOpen => StoreError::Other(format!(
                "the embedded registry {} is already open (another fleetd uses this state_dir); \
                 stop it, or give this fleetd its own state_dir",
                path.display()
            )),
                e => StoreError::Other(format!(
                    "cannot open the embedded registry {}: {e}",
                    path.display()
                )),
            })?;
        let disk = Disk { db, path };
        disk.init()?;
        let loaded = disk.load()?;
        Ok((disk, loaded))
    }

    fn err(&self, what: &str, e: impl Display) -> StoreError {
        StoreError::Other(format!(
            "embedded registry {}: {what}: {e}",
            self.path.display()
        ))
    }

    /// Creates the tables of a new file; refuses a file written by an incompatible format.
    fn init(&self) -> Result<()> {
        let w = self
            .db
            .begin_write()
            .map_err(|e| self.err("begin write", e))?;
        {
            w.open_table(KV).map_err(|e| self.err("open table kv", e))?;
            w.open_table(LEASES)
                .map_err(|e| self.err("open table leases", e))?;
            let mut meta = w
                .open_table(META)
                .map_err(|e| self.err("open table meta", e))?;
            let format = meta
                .get("format")
                .map_err(|e| self.err("read format", e))?
                .map(|g| g.value());
            match format {
                None => {
                    meta.insert("format", FORMAT).map_err(|e| self.err("write format", e))?;
                }
                Some(FORMAT) => {}
                Some(other) => {
                    return Err(self.err(
                        "unknown format",
                        format!("format {other}, this fleetd reads format {FORMAT}; use the fleetd that wrote it"),
                    ))
                }
            }
        }
        w.commit().map_err(|e| self.err("commit", e))
    }

    fn load(&self) -> Result<Loaded> {
        let r = self
            .db
            .begin_read()
            .map_err(|e| self.err("begin read", e))?;
        let meta = r
            .open_table(META)
            .map_err(|e| self.err("open table meta", e))?;
        let revision = meta
            .get("revision")
            .map_err(|e| self.err("read revision", e))?
            .map_or(0, |g| g.value());
        let mut kv = BTreeMap::new();
        let table = r.open_table(KV).map_err(|e| self.err("open table kv", e))?;
        for entry in table.iter().map_err(|e| self.err("read keys", e))? {
            let (k, v) = entry.map_err(|e| self.err("read keys", e))?;
            let key = k.value().to_string();
            let kv_value = decode(&key, v.value()).ok_or_else(|| {
                self.err(
                    "corrupt record",
                    format!("key {key:?} has a record shorter than {HEADER} bytes"),
                )
            })?;
            kv.insert(key, kv_value);
        }
        let mut leases = Vec::new();
        let table = r
            .open_table(LEASES)
            .map_err(|e| self.err("open table leases", e))?;
        for entry in table.iter().map_err(|e| self.err("read leases", e))? {
            let (id, ttl) = entry.map_err(|e| self.err("read leases", e))?;
            leases.push((id.value(), ttl.value()));
        }
        Ok(Loaded {
            kv,
            leases,
            revision,
        })
    }

    /// Writes a batch and makes it durable.
    pub fn write(&self, batch: &Batch) -> Result<()> {
        let w = self
            .db
            .begin_write()
            .map_err(|e| self.err("begin write", e))?;
        {
            let mut kv = w.open_table(KV).map_err(|e| self.err("open table kv", e))?;
            for (key, value) in batch.key_writes() {
                match value {
                    Some(v) => kv.insert(key, encode(v).as_slice()).map(drop),
                    None => kv.remove(key).map(drop),
                }
                .map_err(|e| self.err("write key", e))?;
            }
            let mut leases = w
                .open_table(LEASES)
                .map_err(|e| self.err("open table leases", e))?;
            for (id, ttl) in batch.leases_granted() {
                leases
                    .insert(id, ttl)
                    .map_err(|e| self.err("write lease", e))?;
            }
            for id in batch.leases_revoked() {
                leases.remove(id).map_err(|e| self.err("remove lease", e))?;
            }
            let mut meta = w
                .open_table(META)
                .map_err(|e| self.err("open table meta", e))?;
            meta.insert("revision", batch.revision())
                .map_err(|e| self.err("write revision", e))?;
        }
        w.commit().map_err(|e| self.err("commit", e))
    }
}

fn encode(kv: &KeyValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + kv.value.len());
    out.extend_from_slice(&kv.create_revision.to_le_bytes());
    out.extend_from_slice(&kv.mod_revision.to_le_bytes());
    out.extend_from_slice(&kv.lease.to_le_bytes());
    out.extend_from_slice(&kv.value);
    out
}

fn decode(key: &str, raw: &[u8]) -> Option<KeyValue> {
    let field = |i: usize| -> Option<i64> {
        let bytes: [u8; 8] = raw.get(i * 8..i * 8 + 8)?.try_into().ok()?;
        Some(i64::from_le_bytes(bytes))
    };
    Some(KeyValue {
        key: key.to_string(),
        create_revision: field(0)?,
        mod_revision: field(1)?,
        lease: field(2)?,
        value: raw.get(HEADER..)?.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_short_ones_are_refused() {
        let kv = KeyValue {
            key: "k".into(),
            value: b"v\0x".to_vec(),
            create_revision: 3,
            mod_revision: 9,
            lease: -1,
        };
        assert_eq!(decode("k", &encode(&kv)), Some(kv));
        assert_eq!(decode("k", &[0u8; 23]), None);
    }
}
