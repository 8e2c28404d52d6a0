//! The persisted device store: what every source said about every device, the operators'
//! overrides and each source's last sync, in one embedded database file
//! (`[compliance] store`, default `/var/lib/attestgate/devices.redb`).
//!
//! **Why redb and not SQLite:** redb is pure Rust (no C toolchain, no bundled SQLite to build
//! and patch), its transactions are ACID with copy-on-write pages and a checksummed commit, so
//! a crash mid-write leaves the last committed snapshot, and what we store is a handful of
//! key → value tables that need no SQL. redb 2.6 is the newest line whose `rust-version` (1.85)
//! fits our MSRV 1.88 (redb 3 needs 1.89; rusqlite 0.38+ likewise moved past it).
//!
//! The store is a write-through copy of the in-memory [`super::DeviceTable`]: the table is
//! the authority while the daemon runs; the store is what the next start begins from. It
//! never decides freshness: records keep the time a source last confirmed them, so data
//! older than `max_age` after a restart is as stale as it would have been without one
//! (DESIGN.md invariant 1). Values are JSON, so a row that does not parse (a newer schema, a
//! damaged page redb did not catch) is skipped and counted, never trusted, never a panic.
//!
//! Tables:
//! - `facts`: (source, serial) → [`SourceFact`] as JSON
//! - `sources`: source name → [`SourceState`] as JSON
//! - `overrides`: serial → [`Overrides`] as JSON
//! - `meta`: `schema` → [`SCHEMA`]

// redb's error type is large; it only travels on the cold path of a failed write or read.
#![allow(clippy::result_large_err)]

use super::{Overrides, SourceFact};
use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const FACTS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("facts");
const SOURCES: TableDefinition<&str, &[u8]> = TableDefinition::new("sources");
const OVERRIDES: TableDefinition<&str, &[u8]> = TableDefinition::new("overrides");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The layout version this code writes and reads.
pub const SCHEMA: u64 = 1;

/// The last sync of one source, as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceState {
    /// `file`, `jamf-pro`, `intune`, `risk-feed`.
    pub kind: String,
    /// Unix seconds of the last successful sync.
    pub last_sync: Option<i64>,
    /// The last failure, if the last attempt failed.
    pub last_error: Option<String>,
}

/// Everything the store held at start-up.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub facts: BTreeMap<String, BTreeMap<String, SourceFact>>,
    pub sources: BTreeMap<String, SourceState>,
    pub overrides: BTreeMap<String, Overrides>,
    /// Rows that did not parse and were ignored.
    pub skipped: usize,
}

/// Why the store could not be used.
#[derive(Debug, thiserror::Error)]
#[error("device store {}: {message}", path.display())]
pub struct StoreError {
    pub path: PathBuf,
    pub message: String,
}

/// The open database.
pub struct DeviceStore {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for DeviceStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceStore")
            .field("path", &self.path)
            .finish()
    }
}

impl DeviceStore {
    /// Opens (or creates) the store; refuses one written by a newer schema.
    pub fn open(path: &Path) -> Result<DeviceStore, StoreError> {
        let err = |message: String| StoreError {
            path: path.to_path_buf(),
            message,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| err(format!("cannot create its directory: {e}")))?;
        }
        let db = Database::create(path).map_err(|e| err(e.to_string()))?;
        let store = DeviceStore {
            db,
            path: path.to_path_buf(),
        };
        let found = store.write(|txn| {
            let mut meta = txn.open_table(META)?;
            let found = meta.get("schema")?.map(|v| v.value());
            if found.is_none() {
                meta.insert("schema", SCHEMA)?;
            }
            // create the other tables so readers never meet a missing one
            txn.open_table(FACTS)?;
            txn.open_table(SOURCES)?;
            txn.open_table(OVERRIDES)?;
            Ok(found)
        })?;
        match found {
            Some(v) if v > SCHEMA => Err(err(format!(
                "written by a newer attestgate (schema {v}, this one reads {SCHEMA})"
            ))),
            _ => Ok(store),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn error(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    /// One write transaction, committed durably (fsync) before returning.
    fn write<T>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, redb::Error>,
    ) -> Result<T, StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.error(e))?;
        let out = f(&txn).map_err(|e| self.error(e))?;
        txn.commit().map_err(|e| self.error(e))?;
        Ok(out)
    }

    /// Everything, for start-up.
    pub fn load(&self) -> Result<Snapshot, StoreError> {
        let read = || -> Result<Snapshot, redb::Error> {
            let txn = self.db.begin_read()?;
            let mut snap = Snapshot::default();
            let facts = txn.open_table(FACTS)?;
            for row in facts.iter()? {
                let (k, v) = row?;
                let (source, serial) = k.value();
                match serde_json::from_slice::<SourceFact>(v.value()) {
                    Ok(f) => {
                        snap.facts
                            .entry(source.to_string())
                            .or_default()
                            .insert(serial.to_string(), f);
                    }
                    Err(_) => snap.skipped += 1,
                }
            }
            let sources = txn.open_table(SOURCES)?;
            for row in sources.iter()? {
                let (k, v) = row?;
                match serde_json::from_slice::<SourceState>(v.value()) {
                    Ok(s) => {
                        snap.sources.insert(k.value().to_string(), s);
                    }
                    Err(_) => snap.skipped += 1,
                }
            }
            let overrides = txn.open_table(OVERRIDES)?;
            for row in overrides.iter()? {
                let (k, v) = row?;
                match serde_json::from_slice::<Overrides>(v.value()) {
                    Ok(o) => {
                        snap.overrides.insert(k.value().to_string(), o);
                    }
                    Err(_) => snap.skipped += 1,
                }
            }
            Ok(snap)
        };
        read().map_err(|e| self.error(e))
    }

    /// Applies `writes` in order in one transaction: one commit (and fsync) for a batch.
    pub fn commit(&self, writes: &[Write]) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        self.write(|txn| {
            for w in writes {
                apply(txn, w)?;
            }
            Ok(())
        })
    }

    /// How many fact rows the store holds.
    #[cfg(test)]
    pub fn fact_count(&self) -> Result<u64, StoreError> {
        use redb::ReadableTableMetadata;
        let count =
            || -> Result<u64, redb::Error> { Ok(self.db.begin_read()?.open_table(FACTS)?.len()?) };
        count().map_err(|e| self.error(e))
    }
}

/// One change of the store, queued by the device table and committed after enforcement.
#[derive(Debug, Clone)]
pub enum Write {
    /// Everything the source said is replaced (a successful sync), with its state.
    ReplaceSource {
        source: String,
        facts: BTreeMap<String, SourceFact>,
        state: SourceState,
    },
    /// The source's state alone (a failed sync keeps its facts).
    SourceState { source: String, state: SourceState },
    /// Some devices' facts of one source set (`Some`) or removed (`None`).
    Facts {
        source: String,
        updates: Vec<(String, Option<SourceFact>)>,
    },
    /// A source no longer configured.
    RemoveSource { source: String },
    /// A device's overrides (removed when empty).
    Overrides {
        serial: String,
        overrides: Overrides,
    },
}

fn apply(txn: &redb::WriteTransaction, w: &Write) -> Result<(), redb::Error> {
    match w {
        Write::ReplaceSource {
            source,
            facts,
            state,
        } => {
            let mut t = txn.open_table(FACTS)?;
            t.retain(|(src, _), _| src != source)?;
            for (serial, f) in facts {
                t.insert((source.as_str(), serial.as_str()), to_json(f).as_slice())?;
            }
            txn.open_table(SOURCES)?
                .insert(source.as_str(), to_json(state).as_slice())?;
        }
        Write::SourceState { source, state } => {
            txn.open_table(SOURCES)?
                .insert(source.as_str(), to_json(state).as_slice())?;
        }
        Write::Facts { source, updates } => {
            let mut t = txn.open_table(FACTS)?;
            for (serial, f) in updates {
                let key = (source.as_str(), serial.as_str());
                match f {
                    Some(f) => {
                        t.insert(key, to_json(f).as_slice())?;
                    }
                    None => {
                        t.remove(key)?;
                    }
                }
            }
        }
        Write::RemoveSource { source } => {
            txn.open_table(FACTS)?.retain(|(src, _), _| src != source)?;
            txn.open_table(SOURCES)?.remove(source.as_str())?;
        }
        Write::Overrides { serial, overrides } => {
            let mut t = txn.open_table(OVERRIDES)?;
            if overrides.is_empty() {
                t.remove(serial.as_str())?;
            } else {
                t.insert(serial.as_str(), to_json(overrides).as_slice())?;
            }
        }
    }
    Ok(())
}

fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    // our own types serialize infallibly (no maps with non-string keys)
    serde_json::to_vec(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use config::RiskLevel;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    fn fact(groups: &[&str]) -> SourceFact {
        SourceFact {
            managed: Some(true),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            risk: Some(RiskLevel::Low),
            risk_reasons: vec!["jailbreak check passed".into()],
            udids: ["00008101-AAAA".to_string()].into_iter().collect(),
            platform: Some("ios".into()),
            confirmed_at: UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            expires: None,
        }
    }

    #[test]
    fn round_trips_replaces_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/devices.redb");
        let state = SourceState {
            kind: "file".into(),
            last_sync: Some(1_800_000_000),
            last_error: None,
        };
        {
            let s = DeviceStore::open(&path).unwrap();
            let mut facts = BTreeMap::new();
            facts.insert("A1".to_string(), fact(&["Compliant"]));
            facts.insert("B2".to_string(), fact(&[]));
            let replace =
                |facts: &BTreeMap<String, SourceFact>, source: &str| Write::ReplaceSource {
                    source: source.into(),
                    facts: facts.clone(),
                    state: state.clone(),
                };
            s.commit(&[replace(&facts, "mdm"), replace(&facts, "other")])
                .unwrap();
            facts.remove("B2");
            s.commit(&[replace(&facts, "mdm")]).unwrap();
            s.commit(&[Write::Facts {
                source: "other".into(),
                updates: vec![("A1".into(), None)],
            }])
            .unwrap();
            let o = Overrides {
                block: Some(super::super::overrides::OverrideEntry {
                    level: None,
                    reason: Some("lost".into()),
                    set_at: 1_800_000_000,
                    until: None,
                }),
                risk: None,
            };
            let put = |serial: &str, overrides: Overrides| Write::Overrides {
                serial: serial.into(),
                overrides,
            };
            s.commit(&[
                put("C3", o.clone()),
                put("D4", o),
                put("D4", Overrides::default()),
            ])
            .unwrap();
            assert_eq!(s.fact_count().unwrap(), 2);
        }
        let s = DeviceStore::open(&path).unwrap();
        let snap = s.load().unwrap();
        assert_eq!(snap.facts["mdm"].len(), 1);
        assert_eq!(snap.facts["mdm"]["A1"], fact(&["Compliant"]));
        assert_eq!(snap.facts["other"].keys().collect::<Vec<_>>(), vec!["B2"]);
        assert_eq!(snap.sources["mdm"], state);
        assert_eq!(snap.overrides.keys().collect::<Vec<_>>(), vec!["C3"]);
        assert_eq!(snap.skipped, 0);
        s.commit(&[Write::RemoveSource {
            source: "other".into(),
        }])
        .unwrap();
        let snap = s.load().unwrap();
        assert!(!snap.facts.contains_key("other") && !snap.sources.contains_key("other"));
        let _ = SystemTime::now();
    }

    #[test]
    fn a_newer_schema_and_garbage_rows_are_refused_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("devices.redb");
        {
            let s = DeviceStore::open(&path).unwrap();
            s.write(|txn| {
                txn.open_table(FACTS)?
                    .insert(("mdm", "X"), b"{not json".as_slice())?;
                Ok(())
            })
            .unwrap();
            let snap = s.load().unwrap();
            assert_eq!(snap.skipped, 1);
            assert!(snap.facts.is_empty());
            s.write(|txn| {
                txn.open_table(META)?.insert("schema", SCHEMA + 1)?;
                Ok(())
            })
            .unwrap();
        }
        let e = DeviceStore::open(&path).unwrap_err().to_string();
        assert!(e.contains("newer"), "{e}");
        // not a database at all
        let junk = dir.path().join("junk.redb");
        std::fs::write(&junk, b"hello, this is not redb").unwrap();
        assert!(DeviceStore::open(&junk).is_err());
    }
}
