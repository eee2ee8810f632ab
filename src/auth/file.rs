//! `auth/tokens.json`: the token records, kept in the data directory.
//!
//! The file holds no secret, only each secret's SHA-256. It is mode 0600 in
//! a 0700 directory and is replaced atomically (temp file, fsync, rename,
//! fsync of the directory), like the manifest, so a reader sees the old
//! file or the new one, never half of one. Every change takes
//! `auth/tokens.lock` first: `msgbus token` and a running server (its
//! `/admin/tokens` and its `last_used` updates) can edit the file at the
//! same time without losing each other's changes. The lock is not the
//! store's `LOCK`: tokens can be managed while the server runs.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::policy::Role;
use super::token;
use crate::config::{ByteRate, Rate};
use crate::store::Scope;

/// The directory under the data directory.
pub const AUTH_DIR: &str = "auth";
/// The token file, under [`AUTH_DIR`].
pub const TOKENS_FILE: &str = "tokens.json";
/// The lock every change takes, under [`AUTH_DIR`].
const LOCK_FILE: &str = "tokens.lock";
/// The file format's version.
const VERSION: u32 = 1;

/// One token as stored: everything but the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// The public id (the `<id>` of `mb_<id>_<secret>`).
    pub id: String,
    /// The name it is managed by (unique).
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The types and sources it may publish and see.
    #[serde(default, skip_serializing_if = "Scope::is_unrestricted")]
    pub scope: Scope,
    /// Its own request rate (`100/s`); none: the server's `--rate`.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "rate_text")]
    pub rate: Option<Rate>,
    /// Its own read byte rate (`8MiB/s`); none: the server's
    /// `--read-rate`. Files written before it existed have none.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "read_rate_text"
    )]
    pub read_rate: Option<ByteRate>,
    /// When it was made (RFC 3339).
    pub created: String,
    /// When it stops working (RFC 3339); none: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// When a request last used it (RFC 3339, to the minute or so: the
    /// server writes it back at most once a minute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used: Option<String>,
    /// SHA-256 of the secret, hex.
    pub sha256: String,
}

/// What a new token is to be.
#[derive(Debug, Clone)]
pub struct TokenSpec {
    /// Its name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Its scope.
    pub scope: Scope,
    /// Its own rate.
    pub rate: Option<Rate>,
    /// Its own read byte rate.
    pub read_rate: Option<ByteRate>,
    /// When it expires (RFC 3339).
    pub expires: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct FileBody {
    version: u32,
    tokens: Vec<TokenRecord>,
}

/// Why the token file could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// Reading, writing or locking failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a token file.
    #[error("{}: not a token file: {source}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
    /// A newer msgbus wrote it.
    #[error("{}: format version {found}, this msgbus reads version {VERSION}", path.display())]
    Version {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u32,
    },
    /// A token with that name exists.
    #[error("a token named {0:?} exists; revoke it first or choose another name")]
    NameTaken(String),
    /// No token has that name.
    #[error("no token is named {0:?}")]
    NoSuchName(String),
    /// No random bytes for the secret.
    #[error(transparent)]
    Randomness(#[from] token::NoRandomness),
}

/// The path of the token file of `data_dir`.
pub fn tokens_path(data_dir: &Path) -> PathBuf {
    data_dir.join(AUTH_DIR).join(TOKENS_FILE)
}

/// The records in `data_dir`'s token file (none when it does not exist).
/// Takes no lock: the file is only ever replaced whole.
pub fn load(data_dir: &Path) -> Result<Vec<TokenRecord>, TokenFileError> {
    let path = tokens_path(data_dir);
    match fs::read(&path) {
        Ok(bytes) => parse(&path, &bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(TokenFileError::Io { path, source }),
    }
}

fn parse(path: &Path, bytes: &[u8]) -> Result<Vec<TokenRecord>, TokenFileError> {
    let body: FileBody =
        serde_json::from_slice(bytes).map_err(|source| TokenFileError::Format {
            path: path.to_path_buf(),
            source,
        })?;
    if body.version != VERSION {
        return Err(TokenFileError::Version {
            path: path.to_path_buf(),
            found: body.version,
        });
    }
    Ok(body.tokens)
}

/// Makes a token from `spec` at `now`: the stored record and the token
/// itself, which exists nowhere else once the caller has shown it.
pub fn create(
    data_dir: &Path,
    spec: TokenSpec,
    now: &str,
) -> Result<(TokenRecord, String), TokenFileError> {
    edit(data_dir, |records| {
        if records.iter().any(|r| r.name == spec.name) {
            return Err(TokenFileError::NameTaken(spec.name.clone()));
        }
        let new = token::generate()?;
        let record = TokenRecord {
            id: new.id,
            name: spec.name,
            role: spec.role,
            scope: spec.scope,
            rate: spec.rate,
            read_rate: spec.read_rate,
            created: now.to_string(),
            expires: spec.expires,
            last_used: None,
            sha256: new.hash,
        };
        records.push(record.clone());
        Ok((record, new.token))
    })
}

/// Removes the token named `name`; it stops working as soon as the server
/// has seen the file (within two seconds).
pub fn revoke(data_dir: &Path, name: &str) -> Result<TokenRecord, TokenFileError> {
    edit(data_dir, |records| {
        let at = records
            .iter()
            .position(|r| r.name == name)
            .ok_or_else(|| TokenFileError::NoSuchName(name.to_string()))?;
        Ok(records.remove(at))
    })
}

/// Writes `last_used` times (by token id) back, keeping the later of the
/// file's and the given one. Unknown ids (revoked meanwhile) are skipped.
pub fn record_last_used(data_dir: &Path, used: &[(String, String)]) -> Result<(), TokenFileError> {
    edit(data_dir, |records| {
        for (id, at) in used {
            if let Some(r) = records.iter_mut().find(|r| &r.id == id) {
                // RFC 3339 UTC times of one format order as strings.
                if r.last_used.as_deref().is_none_or(|old| old < at.as_str()) {
                    r.last_used = Some(at.clone());
                }
            }
        }
        Ok(())
    })
}

/// Reads, changes and atomically replaces the token file under its lock.
fn edit<R>(
    data_dir: &Path,
    change: impl FnOnce(&mut Vec<TokenRecord>) -> Result<R, TokenFileError>,
) -> Result<R, TokenFileError> {
    let dir = data_dir.join(AUTH_DIR);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TokenFileError::Io { path, source }
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(io(&dir))?;
    let lock_path = dir.join(LOCK_FILE);
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .map_err(io(&lock_path))?;
    fs2::FileExt::lock_exclusive(&lock).map_err(io(&lock_path))?;
    let mut records = load(data_dir)?;
    let result = change(&mut records)?;
    let path = tokens_path(data_dir);
    let mut bytes = serde_json::to_vec_pretty(&FileBody {
        version: VERSION,
        tokens: records,
    })
    .expect("token records serialize");
    bytes.push(b'\n');
    crate::store::fsutil::write_atomic_private(&path, &bytes).map_err(io(&path))?;
    // Dropping the file releases the lock.
    drop(lock);
    Ok(result)
}

/// `Rate` as its text (`100/s`) in the file.
mod rate_text {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::config::Rate;

    pub fn serialize<S: Serializer>(rate: &Option<Rate>, s: S) -> Result<S::Ok, S::Error> {
        match rate {
            Some(r) => s.collect_str(r),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Rate>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| Rate::parse(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// `ByteRate` as its text (`8MiB/s`) in the file.
mod read_rate_text {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::config::ByteRate;

    pub fn serialize<S: Serializer>(rate: &Option<ByteRate>, s: S) -> Result<S::Ok, S::Error> {
        match rate {
            Some(r) => s.collect_str(r),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ByteRate>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| ByteRate::parse(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn spec(name: &str) -> TokenSpec {
        TokenSpec {
            name: name.into(),
            role: Role::Read,
            scope: Scope {
                type_prefixes: vec!["story.".into()],
                source_prefixes: vec![],
            },
            rate: Some(Rate::parse("100/s").unwrap()),
            read_rate: Some(ByteRate::parse("8MiB/s").unwrap()),
            expires: None,
        }
    }

    #[test]
    fn create_list_revoke_and_the_file_holds_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        let (record, token) = create(dir.path(), spec("dash"), "2026-01-01T00:00:00Z").unwrap();
        let (_, secret) = token::split(&token).unwrap();
        let text = fs::read_to_string(tokens_path(dir.path())).unwrap();
        assert!(!text.contains(secret), "the secret is in the file");
        assert!(text.contains(&record.sha256));
        let mode = fs::metadata(tokens_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load(dir.path()).unwrap(), vec![record.clone()]);
        assert!(matches!(
            create(dir.path(), spec("dash"), "x"),
            Err(TokenFileError::NameTaken(_))
        ));
        assert_eq!(revoke(dir.path(), "dash").unwrap(), record);
        assert!(load(dir.path()).unwrap().is_empty());
        assert!(matches!(
            revoke(dir.path(), "dash"),
            Err(TokenFileError::NoSuchName(_))
        ));
    }

    #[test]
    fn last_used_keeps_the_later_time_and_skips_revoked_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let (a, _) = create(dir.path(), spec("a"), "2026-01-01T00:00:00Z").unwrap();
        let used = |at: &str| vec![(a.id.clone(), at.to_string()), ("gone".into(), at.into())];
        record_last_used(dir.path(), &used("2026-01-02T00:00:00Z")).unwrap();
        record_last_used(dir.path(), &used("2026-01-01T12:00:00Z")).unwrap();
        let records = load(dir.path()).unwrap();
        assert_eq!(
            records[0].last_used.as_deref(),
            Some("2026-01-02T00:00:00Z")
        );
        assert_eq!(records.len(), 1);
    }

    #[test]
    fn a_damaged_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join(AUTH_DIR)).unwrap();
        fs::write(tokens_path(dir.path()), b"{not json").unwrap();
        let e = load(dir.path()).unwrap_err();
        assert!(e.to_string().contains("tokens.json"), "{e}");
    }
}
