//! Payload schemas: the registered JSON Schema documents, per event type,
//! in numbered, immutable versions (`schemas.json`, [`layout::SCHEMAS`]).
//!
//! The store keeps the documents only; compiling and validating them is
//! the `schemas` module's work, above the store. The writer thread alone
//! writes the file: each change (a new version, a delete) rewrites it
//! whole, atomically (temp file, fsync, rename, fsync of the directory),
//! before the change is answered. Changes are rare and the file small
//! (bounded by the limits in [`SchemaLimits`]), so a rewrite per change
//! costs nothing worth a log.
//!
//! The file is `{"crc":"<CRC32C of rec, hex>","rec":{...}}`, so damage is
//! told apart from a valid file: the integrity monitor compares the file
//! with the writer's copy ([`Schemas::file_bytes`]) and the writer rewrites
//! it from that copy; at start a damaged file is replaced by the newest
//! backup's copy (with an alert), or the start is refused.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use tokio::sync::oneshot;

use super::error::StoreError;
use super::fsutil;
use super::layout;
use super::Shared;

/// Format version of `schemas.json`.
pub const VERSION: u32 = 1;

/// One version of a type's schema, as stored. Immutable once stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchemaVersion {
    /// 1, 2, ... per type.
    pub version: u32,
    /// The JSON Schema document as registered.
    pub schema: Arc<Value>,
    /// When it was registered (RFC 3339).
    pub created_at: String,
}

/// A type's schemas: every version, and whether validation is on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchemaType {
    /// The event type.
    #[serde(rename = "type")]
    pub ty: String,
    /// Every version, oldest first (never empty).
    pub versions: Vec<SchemaVersion>,
    /// When `DELETE /schemas/{type}` stopped validation, if it did (a
    /// later version clears it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<String>,
}

impl SchemaType {
    /// The newest version.
    pub fn latest(&self) -> &SchemaVersion {
        self.versions.last().expect("a schema type has a version")
    }

    /// True while events of this type are validated.
    pub fn active(&self) -> bool {
        self.deleted_at.is_none()
    }

    /// Version `n`, if stored.
    pub fn version(&self, n: u32) -> Option<&SchemaVersion> {
        self.versions.iter().find(|v| v.version == n)
    }
}

/// Every type's schemas, as last committed: replaced whole at each change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SchemaCatalog {
    /// By type.
    pub types: BTreeMap<String, SchemaType>,
    /// Changes committed since start (0 for the state loaded at start).
    pub generation: u64,
}

/// Limits of the catalog, checked by the writer (which sees every change
/// in order).
#[derive(Debug, Clone, Copy)]
pub struct SchemaLimits {
    /// Most versions one type may have.
    pub max_versions: usize,
    /// Most types with a schema (deleted ones included: their versions stay).
    pub max_types: usize,
}

#[derive(Serialize, Deserialize)]
struct SchemasRec {
    version: u32,
    types: Vec<SchemaType>,
}

#[derive(Deserialize)]
struct SchemasFile<'a> {
    crc: String,
    #[serde(borrow)]
    rec: &'a RawValue,
}

/// The committed catalog and the file bytes the writer last wrote.
#[derive(Debug, Default)]
pub struct Schemas(RwLock<(Arc<SchemaCatalog>, Arc<Vec<u8>>)>);

impl Schemas {
    /// The committed catalog.
    pub fn catalog(&self) -> Arc<SchemaCatalog> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).0.clone()
    }

    /// The bytes of `schemas.json` as the writer last wrote them (empty
    /// when no schema was ever registered and there is no file).
    pub fn file_bytes(&self) -> Arc<Vec<u8>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).1.clone()
    }

    fn set(&self, catalog: SchemaCatalog, bytes: Vec<u8>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = (Arc::new(catalog), Arc::new(bytes));
    }
}

/// Why a schema change was refused.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// No schema was ever registered for this type (404).
    #[error("no schema is registered for type {0:?}")]
    NotFound(String),
    /// The type has a schema, but validation was already stopped (404).
    #[error("the schema of type {0:?} is already deleted")]
    AlreadyDeleted(String),
    /// One more version would pass `--max-schema-versions` (409).
    #[error(
        "type {ty:?} already has {limit} schema versions, the most allowed (--max-schema-versions)"
    )]
    TooManyVersions {
        /// The type.
        ty: String,
        /// The limit.
        limit: usize,
    },
    /// One more type would pass `--max-schema-types` (409).
    #[error("there are already schemas for {limit} types, the most allowed (--max-schema-types)")]
    TooManyTypes {
        /// The limit.
        limit: usize,
    },
    /// The store refused or failed (mapped like any store error).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A change to the catalog, answered once it is durable.
#[derive(Debug)]
pub enum Request {
    /// Add the next version of `ty`'s schema (and resume validation).
    Put {
        /// The event type.
        ty: String,
        /// The document (already checked to be a valid JSON Schema).
        schema: Arc<Value>,
        /// Limits to apply.
        limits: SchemaLimits,
        /// The type's entry after the change.
        reply: oneshot::Sender<Result<SchemaType, SchemaError>>,
    },
    /// Stop validating `ty` (its versions stay).
    Delete {
        /// The event type.
        ty: String,
        /// The type's entry after the change.
        reply: oneshot::Sender<Result<SchemaType, SchemaError>>,
    },
}

/// The file's bytes for `catalog`.
fn encode(catalog: &SchemaCatalog) -> Vec<u8> {
    let rec = SchemasRec {
        version: VERSION,
        types: catalog.types.values().cloned().collect(),
    };
    let rec = serde_json::to_string(&rec).expect("schemas serialize");
    let crc = format!("{:08x}", crc32c::crc32c(rec.as_bytes()));
    let mut out = Vec::with_capacity(rec.len() + 32);
    out.extend_from_slice(b"{\"crc\":\"");
    out.extend_from_slice(crc.as_bytes());
    out.extend_from_slice(b"\",\"rec\":");
    out.extend_from_slice(rec.as_bytes());
    out.extend_from_slice(b"}\n");
    out
}

/// Why `schemas.json` cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(String);

/// Parses and checks the file's bytes.
pub fn decode(bytes: &[u8]) -> Result<SchemaCatalog, DecodeError> {
    let err = |m: String| DecodeError(m);
    let file: SchemasFile<'_> =
        serde_json::from_slice(bytes).map_err(|e| err(format!("not a schemas file: {e}")))?;
    let crc = format!("{:08x}", crc32c::crc32c(file.rec.get().as_bytes()));
    if crc != file.crc {
        return Err(err(format!(
            "checksum mismatch (file says {}, contents give {crc})",
            file.crc
        )));
    }
    let rec: SchemasRec = serde_json::from_str(file.rec.get())
        .map_err(|e| err(format!("not a schemas file: {e}")))?;
    if rec.version != VERSION {
        return Err(err(format!(
            "format version {}, this msgbus reads version {VERSION}",
            rec.version
        )));
    }
    let mut types = BTreeMap::new();
    for t in rec.types {
        if t.versions.is_empty() {
            return Err(err(format!("type {:?} has no version", t.ty)));
        }
        types.insert(t.ty.clone(), t);
    }
    Ok(SchemaCatalog {
        types,
        generation: 0,
    })
}

/// What start-up found wrong with `schemas.json` and did about it.
#[derive(Debug, Clone)]
pub struct LoadNote {
    /// What was done.
    pub detail: String,
}

/// Loads `schemas.json` at start. A damaged file is moved to quarantine
/// and replaced by the newest backup's intact copy (the note says so, for
/// an alert); with no intact copy the start is refused, since starting
/// without the schemas would silently stop validating.
pub fn load(data_dir: &Path) -> Result<(Schemas, Option<LoadNote>), StoreError> {
    let path = layout::schemas_path(data_dir);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok((Schemas::default(), None));
        }
        Err(e) => return Err(StoreError::file("read", &path, e)),
    };
    let why = match decode(&bytes) {
        Ok(catalog) => {
            let s = Schemas::default();
            s.set(catalog, bytes);
            return Ok((s, None));
        }
        Err(why) => why,
    };
    let Some((backup, good, catalog)) = newest_backup_copy(data_dir) else {
        return Err(StoreError::Corrupt(format!(
            "{} is damaged ({why}) and no backup holds an intact copy: restore the store from a \
             backup, or move the file aside to start without payload schemas",
            path.display()
        )));
    };
    fsutil::quarantine(data_dir, &path, 0, &bytes)?;
    fsutil::write_atomic(&path, &good).map_err(|e| StoreError::file("write", &path, e))?;
    let s = Schemas::default();
    s.set(catalog, good);
    Ok((
        s,
        Some(LoadNote {
            detail: format!(
                "{} was damaged ({why}); restored from backup {backup} (versions registered after that backup are lost)",
                layout::SCHEMAS
            ),
        }),
    ))
}

/// The newest backup holding an intact `schemas.json`: its name, the
/// bytes and the catalog.
fn newest_backup_copy(data_dir: &Path) -> Option<(String, Vec<u8>, SchemaCatalog)> {
    let mut names: Vec<String> = std::fs::read_dir(layout::backups_dir(data_dir))
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with(layout::BACKUP_TMP_PREFIX))
        .collect();
    // Backup names start with a zero-padded sequence number, then a stamp:
    // sorted, the newest is last.
    names.sort();
    names.into_iter().rev().find_map(|name| {
        let bytes = std::fs::read(
            layout::backups_dir(data_dir)
                .join(&name)
                .join(layout::SCHEMAS),
        )
        .ok()?;
        let catalog = decode(&bytes).ok()?;
        Some((name, bytes, catalog))
    })
}

/// Applies one change, on the writer thread: the new catalog is written
/// and fsynced before it is published and answered; a failed write
/// changes nothing.
pub(super) fn apply(shared: &Shared, request: Request) -> bool {
    let now = crate::clock::now_rfc3339();
    let current = shared.schemas.catalog();
    let mut next = (*current).clone();
    next.generation += 1;
    let (ty, result, reply) = match request {
        Request::Put {
            ty,
            schema,
            limits,
            reply,
        } => {
            let type_count = next.types.len();
            let result = match next.types.get_mut(&ty) {
                Some(t) if t.versions.len() >= limits.max_versions => {
                    Err(SchemaError::TooManyVersions {
                        ty: ty.clone(),
                        limit: limits.max_versions,
                    })
                }
                Some(t) => {
                    let version = t.latest().version + 1;
                    t.versions.push(SchemaVersion {
                        version,
                        schema,
                        created_at: now,
                    });
                    t.deleted_at = None;
                    Ok(())
                }
                None if type_count >= limits.max_types => Err(SchemaError::TooManyTypes {
                    limit: limits.max_types,
                }),
                None => {
                    next.types.insert(
                        ty.clone(),
                        SchemaType {
                            ty: ty.clone(),
                            versions: vec![SchemaVersion {
                                version: 1,
                                schema,
                                created_at: now,
                            }],
                            deleted_at: None,
                        },
                    );
                    Ok(())
                }
            };
            (ty, result, reply)
        }
        Request::Delete { ty, reply } => {
            let result = match next.types.get_mut(&ty) {
                None => Err(SchemaError::NotFound(ty.clone())),
                Some(t) if !t.active() => Err(SchemaError::AlreadyDeleted(ty.clone())),
                Some(t) => {
                    t.deleted_at = Some(now);
                    Ok(())
                }
            };
            (ty, result, reply)
        }
    };
    let result = result.and_then(|()| {
        if let Some(refusal) = shared.commit_refusal() {
            return Err(SchemaError::Store(refusal.into()));
        }
        let bytes = encode(&next);
        let path = layout::schemas_path(&shared.data_dir);
        fsutil::write_atomic(&path, &bytes).map_err(|e| StoreError::file("write", &path, e))?;
        let entry = next.types.get(&ty).cloned().expect("the changed type");
        shared.schemas.set(next, bytes);
        Ok(entry)
    });
    let committed = result.is_ok();
    let _ = reply.send(result);
    committed
}

/// Rewrites `schemas.json` from the writer's copy when it differs (the
/// integrity monitor's finding): the damaged bytes go to quarantine first.
/// `Ok(false)` when the file was intact after all.
pub(super) fn repair(shared: &Shared) -> Result<bool, StoreError> {
    let path = layout::schemas_path(&shared.data_dir);
    let good = shared.schemas.file_bytes();
    match std::fs::read(&path) {
        Ok(b) if b == *good => return Ok(false),
        Ok(b) => {
            fsutil::quarantine(&shared.data_dir, &path, 0, &b)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if good.is_empty() {
                return Ok(false);
            }
        }
        Err(e) => return Err(StoreError::file("read", &path, e)),
    }
    fsutil::write_atomic(&path, &good).map_err(|e| StoreError::file("write", &path, e))?;
    Ok(true)
}

/// The integrity check: `schemas.json` against the writer's copy. `None`
/// when it matches (or neither exists).
pub(super) fn check(shared: &Shared) -> Option<String> {
    let good = shared.schemas.file_bytes();
    let path = layout::schemas_path(&shared.data_dir);
    match std::fs::read(&path) {
        Ok(b) if b == *good => None,
        // A change may have been written since the copy was taken.
        Ok(b) if b == *shared.schemas.file_bytes() => None,
        Ok(b) => Some(match decode(&b) {
            Err(why) => format!("is damaged: {why}"),
            Ok(_) => "differs from the writer's copy".into(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            (!good.is_empty()).then(|| "is missing".to_string())
        }
        Err(e) if fsutil::is_descriptor_exhaustion(&e) => None,
        Err(e) => Some(format!("cannot be read: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_and_decode_round_trip_and_damage_is_detected() {
        let mut c = SchemaCatalog::default();
        c.types.insert(
            "t".into(),
            SchemaType {
                ty: "t".into(),
                versions: vec![SchemaVersion {
                    version: 1,
                    schema: Arc::new(serde_json::json!({"type": "object"})),
                    created_at: "2026-01-01T00:00:00Z".into(),
                }],
                deleted_at: None,
            },
        );
        let bytes = encode(&c);
        assert_eq!(decode(&bytes).unwrap(), c);
        let mut bad = bytes.clone();
        let at = bad.len() - 10;
        bad[at] ^= 1;
        assert!(decode(&bad).is_err());
    }
}
