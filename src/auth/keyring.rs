//! The server's live view of the tokens: the records of `auth/tokens.json`
//! by id, re-read whenever the file is replaced, and the bootstrap admin
//! secret from `MSGBUS_ADMIN_TOKEN`.
//!
//! [`Keyring::refresh`] runs every second (a job in `app.rs`): it compares
//! the file's identity (inode, size, modification time; every change
//! replaces the file, so the inode moves) with the last one loaded and
//! re-reads it when it differs. A create or revoke by `msgbus token`, by
//! another server's API or by hand therefore takes effect within a second
//! or two, without a restart. Expiry is checked on every request.
//!
//! `last_used` is kept in memory per token and written back to the file
//! at most once a minute, so a busy token does not rewrite the file on
//! every request.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};

use super::file::{self, TokenFileError, TokenRecord};
use super::policy::{Principal, Role};
use super::token;
use crate::config::AuthMode;
use crate::store::Scope;

/// The least length of `MSGBUS_ADMIN_TOKEN`.
pub const MIN_BOOTSTRAP_LEN: usize = 32;

/// The principal name of the bootstrap secret.
pub const BOOTSTRAP_NAME: &str = "bootstrap-admin";

/// What a presented credential is worth.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Access control is off (or open): the request may do everything.
    Open(Arc<Principal>),
    /// A valid token.
    Valid(Arc<Principal>),
    /// No credential, where one is required.
    Missing,
    /// A credential that is not a live token: unknown, wrong secret,
    /// revoked or expired. One answer for all, so a caller learns nothing
    /// about which tokens exist.
    Invalid,
}

/// One loaded token.
#[derive(Debug)]
struct Entry {
    principal: Arc<Principal>,
    hash: [u8; 32],
    expires: Option<DateTime<Utc>>,
    /// Unix seconds of the last request that used it (0: none since load).
    last_used: AtomicI64,
}

#[derive(Debug, Default)]
struct Loaded {
    stamp: Option<FileStamp>,
    by_id: HashMap<String, Arc<Entry>>,
}

/// Identifies one version of the token file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

/// The tokens a server accepts.
#[derive(Debug)]
pub struct Keyring {
    data_dir: PathBuf,
    mode: AuthMode,
    bootstrap: Option<[u8; 32]>,
    loaded: RwLock<Loaded>,
    /// Some `last_used` changed since the last write-back.
    used_since_flush: AtomicBool,
    /// `auto` has required a token once: it goes on requiring one, so
    /// revoking the last token never reopens the bus.
    latched: AtomicBool,
    /// Who a request runs as when no token is needed, made once (not per
    /// request).
    anonymous: Arc<Principal>,
    /// Who the bootstrap secret's requests run as.
    bootstrap_principal: Arc<Principal>,
}

/// `MSGBUS_ADMIN_TOKEN` is too short to be a secret.
#[derive(Debug, thiserror::Error)]
#[error("MSGBUS_ADMIN_TOKEN must be at least {MIN_BOOTSTRAP_LEN} characters (it has {0}); use e.g. `openssl rand -hex 32`")]
pub struct WeakBootstrap(pub usize);

impl Keyring {
    /// Loads `data_dir`'s tokens. `bootstrap` is `MSGBUS_ADMIN_TOKEN`.
    pub fn open(
        data_dir: &Path,
        mode: AuthMode,
        bootstrap: Option<&str>,
    ) -> Result<Keyring, KeyringError> {
        let bootstrap = match bootstrap {
            Some(s) if s.chars().count() < MIN_BOOTSTRAP_LEN => {
                return Err(WeakBootstrap(s.chars().count()).into())
            }
            Some(s) => Some(token::digest(s)),
            None => None,
        };
        let keyring = Keyring {
            data_dir: data_dir.to_path_buf(),
            mode,
            bootstrap,
            loaded: RwLock::default(),
            used_since_flush: AtomicBool::new(false),
            latched: AtomicBool::new(false),
            anonymous: Principal::anonymous(),
            bootstrap_principal: bootstrap_principal(),
        };
        keyring.refresh()?;
        Ok(keyring)
    }

    /// Who a request that needs no token runs as (it may do everything).
    pub fn anonymous(&self) -> Arc<Principal> {
        self.anonymous.clone()
    }

    /// The configured mode.
    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// True when requests need a token now.
    pub fn required(&self) -> bool {
        match self.mode {
            AuthMode::Off => false,
            AuthMode::Required => true,
            AuthMode::Auto => {
                if self.latched.load(Ordering::Relaxed) {
                    return true;
                }
                let now = self.bootstrap.is_some() || !self.read().by_id.is_empty();
                if now {
                    self.latched.store(true, Ordering::Relaxed);
                }
                now
            }
        }
    }

    /// Tokens loaded (the bootstrap secret not counted).
    pub fn len(&self) -> usize {
        self.read().by_id.len()
    }

    /// True when no token is loaded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Loaded> {
        self.loaded.read().unwrap_or_else(|e| e.into_inner())
    }

    /// What `presented` (the bearer credential, if any) is worth at `now`.
    pub fn authenticate(&self, presented: Option<&str>, now: DateTime<Utc>) -> Verdict {
        if !self.required() {
            return Verdict::Open(self.anonymous());
        }
        let Some(presented) = presented else {
            return Verdict::Missing;
        };
        if let Some((id, secret)) = token::split(presented) {
            let entry = self.read().by_id.get(id).cloned();
            return match entry {
                Some(e)
                    if token::secret_matches(secret, &e.hash)
                        && e.expires.is_none_or(|at| now < at) =>
                {
                    let was = e.last_used.swap(now.timestamp(), Ordering::Relaxed);
                    if now.timestamp() - was >= 60 {
                        self.used_since_flush.store(true, Ordering::Relaxed);
                    }
                    Verdict::Valid(e.principal.clone())
                }
                _ => Verdict::Invalid,
            };
        }
        match &self.bootstrap {
            Some(hash) if token::secret_matches(presented, hash) => {
                Verdict::Valid(self.bootstrap_principal.clone())
            }
            _ => Verdict::Invalid,
        }
    }

    /// Re-reads the token file when it was replaced since the last load.
    /// Returns true when it was. A file that cannot be read or parsed
    /// keeps the tokens loaded before (and is an error for the caller to
    /// report): a half-edited file must not lock everyone out, nor let
    /// everyone in.
    pub fn refresh(&self) -> Result<bool, KeyringError> {
        let path = file::tokens_path(&self.data_dir);
        let stamp = match std::fs::metadata(&path) {
            Ok(m) => Some(FileStamp {
                ino: m.ino(),
                len: m.len(),
                mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => return Err(TokenFileError::Io { path, source }.into()),
        };
        if self.read().stamp == stamp && stamp.is_some() {
            return Ok(false);
        }
        let records = file::load(&self.data_dir)?;
        let mut by_id = HashMap::with_capacity(records.len());
        let old = self.read();
        for r in records {
            let entry = entry(&r)?;
            // Carry the in-memory last use over the reload.
            if let Some(prev) = old.by_id.get(&r.id) {
                entry
                    .last_used
                    .store(prev.last_used.load(Ordering::Relaxed), Ordering::Relaxed);
            }
            by_id.insert(r.id.clone(), Arc::new(entry));
        }
        drop(old);
        let mut loaded = self.loaded.write().unwrap_or_else(|e| e.into_inner());
        let changed = loaded.stamp != stamp || loaded.by_id.len() != by_id.len();
        *loaded = Loaded { stamp, by_id };
        Ok(changed)
    }

    /// Writes the in-memory `last_used` times back to the file when any
    /// moved by a minute or more since the last write-back.
    pub fn flush_last_used(&self) -> Result<(), KeyringError> {
        if !self.used_since_flush.swap(false, Ordering::Relaxed) {
            return Ok(());
        }
        let used: Vec<(String, String)> = self
            .read()
            .by_id
            .iter()
            .filter_map(|(id, e)| {
                let at = e.last_used.load(Ordering::Relaxed);
                let at = DateTime::<Utc>::from_timestamp(at, 0).filter(|_| at > 0)?;
                Some((id.clone(), crate::clock::rfc3339(at)))
            })
            .collect();
        if used.is_empty() {
            return Ok(());
        }
        file::record_last_used(&self.data_dir, &used)?;
        Ok(())
    }

    /// The records with the in-memory `last_used` times merged in.
    pub fn records(&self) -> Result<Vec<TokenRecord>, KeyringError> {
        let mut records = file::load(&self.data_dir)?;
        let loaded = self.read();
        for r in &mut records {
            if let Some(e) = loaded.by_id.get(&r.id) {
                let at = e.last_used.load(Ordering::Relaxed);
                if let Some(t) = DateTime::<Utc>::from_timestamp(at, 0).filter(|_| at > 0) {
                    let t = crate::clock::rfc3339(t);
                    if r.last_used.as_deref().is_none_or(|old| old < t.as_str()) {
                        r.last_used = Some(t);
                    }
                }
            }
        }
        Ok(records)
    }

    /// The data directory whose tokens these are.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
}

fn bootstrap_principal() -> Arc<Principal> {
    Arc::new(Principal {
        name: BOOTSTRAP_NAME.into(),
        id: None,
        role: Role::Admin,
        scope: Scope::default(),
        rate: None,
        read_rate: None,
    })
}

fn entry(r: &TokenRecord) -> Result<Entry, KeyringError> {
    let bad = |what: &str| KeyringError::BadRecord {
        name: r.name.clone(),
        what: what.to_string(),
    };
    let hash = token::parse_hash(&r.sha256).ok_or_else(|| bad("sha256 is not 64 hex digits"))?;
    let expires = match &r.expires {
        Some(t) => Some(
            DateTime::parse_from_rfc3339(t)
                .map_err(|_| bad("expires is not an RFC 3339 time"))?
                .with_timezone(&Utc),
        ),
        None => None,
    };
    Ok(Entry {
        principal: Arc::new(Principal {
            name: r.name.clone(),
            id: Some(r.id.clone()),
            role: r.role,
            scope: r.scope.clone(),
            rate: r.rate,
            read_rate: r.read_rate,
        }),
        hash,
        expires,
        last_used: AtomicI64::new(0),
    })
}

/// Why the tokens could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    /// The file.
    #[error(transparent)]
    File(#[from] TokenFileError),
    /// A record that cannot be used.
    #[error("token {name:?} in auth/tokens.json: {what}")]
    BadRecord {
        /// The token's name.
        name: String,
        /// What is wrong.
        what: String,
    },
    /// The bootstrap secret.
    #[error(transparent)]
    WeakBootstrap(#[from] WeakBootstrap),
}

#[cfg(test)]
mod tests {
    use super::super::file::TokenSpec;
    use super::*;

    fn spec(name: &str, expires: Option<&str>) -> TokenSpec {
        TokenSpec {
            name: name.into(),
            role: Role::Publish,
            scope: Scope::default(),
            rate: None,
            read_rate: None,
            expires: expires.map(String::from),
        }
    }

    fn now() -> DateTime<Utc> {
        Utc::now()
    }

    #[test]
    fn auto_is_open_until_a_token_exists_then_requires_one() {
        let dir = tempfile::tempdir().unwrap();
        let k = Keyring::open(dir.path(), AuthMode::Auto, None).unwrap();
        assert!(matches!(k.authenticate(None, now()), Verdict::Open(_)));
        let (_, t) = file::create(dir.path(), spec("p", None), "2026-01-01T00:00:00Z").unwrap();
        assert!(k.refresh().unwrap());
        assert!(matches!(k.authenticate(None, now()), Verdict::Missing));
        match k.authenticate(Some(&t), now()) {
            Verdict::Valid(p) => assert_eq!((p.name.as_str(), p.role), ("p", Role::Publish)),
            v => panic!("{v:?}"),
        }
        // A wrong secret for a real id, an unknown id and junk: one answer.
        let (id, _) = token::split(&t).unwrap();
        for bad in [
            format!("mb_{id}_nope"),
            "mb_0000000000000000_x".into(),
            "junk".into(),
        ] {
            assert!(
                matches!(k.authenticate(Some(&bad), now()), Verdict::Invalid),
                "{bad}"
            );
        }
        // Revoking the last token does not reopen the bus.
        file::revoke(dir.path(), "p").unwrap();
        assert!(k.refresh().unwrap());
        assert!(matches!(k.authenticate(Some(&t), now()), Verdict::Invalid));
        assert!(matches!(k.authenticate(None, now()), Verdict::Missing));
    }

    #[test]
    fn an_expired_token_is_invalid() {
        let dir = tempfile::tempdir().unwrap();
        let (_, t) =
            file::create(dir.path(), spec("e", Some("2026-01-01T00:00:00Z")), "x").unwrap();
        let k = Keyring::open(dir.path(), AuthMode::Required, None).unwrap();
        let before = DateTime::parse_from_rfc3339("2025-12-31T23:59:59Z")
            .unwrap()
            .with_timezone(&Utc);
        let after = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert!(matches!(
            k.authenticate(Some(&t), before),
            Verdict::Valid(_)
        ));
        assert!(matches!(k.authenticate(Some(&t), after), Verdict::Invalid));
    }

    #[test]
    fn the_bootstrap_secret_is_an_admin_and_must_be_long() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Keyring::open(dir.path(), AuthMode::Auto, Some("short")).is_err());
        let secret = "0123456789abcdef0123456789abcdef";
        let k = Keyring::open(dir.path(), AuthMode::Auto, Some(secret)).unwrap();
        assert!(k.required());
        match k.authenticate(Some(secret), now()) {
            Verdict::Valid(p) => assert_eq!(p.role, Role::Admin),
            v => panic!("{v:?}"),
        }
        assert!(matches!(
            k.authenticate(Some(&secret[1..]), now()),
            Verdict::Invalid
        ));
    }

    #[test]
    fn off_ignores_tokens_and_a_damaged_file_keeps_the_old_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let (_, t) = file::create(dir.path(), spec("p", None), "x").unwrap();
        let off = Keyring::open(dir.path(), AuthMode::Off, None).unwrap();
        assert!(matches!(off.authenticate(None, now()), Verdict::Open(_)));
        let k = Keyring::open(dir.path(), AuthMode::Auto, None).unwrap();
        std::fs::write(file::tokens_path(dir.path()), b"{oops").unwrap();
        assert!(k.refresh().is_err());
        assert!(matches!(k.authenticate(Some(&t), now()), Verdict::Valid(_)));
    }

    #[test]
    fn last_used_is_written_back() {
        let dir = tempfile::tempdir().unwrap();
        let (_, t) = file::create(dir.path(), spec("p", None), "x").unwrap();
        let k = Keyring::open(dir.path(), AuthMode::Auto, None).unwrap();
        assert!(matches!(k.authenticate(Some(&t), now()), Verdict::Valid(_)));
        k.flush_last_used().unwrap();
        let r = file::load(dir.path()).unwrap();
        assert!(r[0].last_used.is_some(), "{r:?}");
        assert!(k.refresh().unwrap());
        assert!(matches!(k.authenticate(Some(&t), now()), Verdict::Valid(_)));
    }
}
