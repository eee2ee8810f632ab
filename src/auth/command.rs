//! `msgbus token create|list|revoke`: token management from a terminal.
//! Works on a running server's data directory too: it edits only
//! `auth/tokens.json`, under that file's own lock, and the server picks
//! the change up within two seconds.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::file::{self, TokenRecord, TokenSpec};
use super::policy::Role;
use crate::config::{parse_duration, ByteRate, Rate};
use crate::store::Scope;

/// `msgbus token ...`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token; the token is printed once, alone on the last line.
    Create(CreateArgs),
    /// List the tokens (names, roles, scopes, times; never secrets).
    List {
        /// The data directory.
        #[arg(long, env = "MSGBUS_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
    },
    /// Revoke a token by name; a running server refuses it within 2 s.
    Revoke {
        /// The data directory.
        #[arg(long, env = "MSGBUS_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
        /// The token's name.
        name: String,
    },
}

/// `msgbus token create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The data directory.
    #[arg(long, env = "MSGBUS_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// A unique name (`[A-Za-z0-9._-]`, at most 128).
    #[arg(long)]
    pub name: String,
    /// What it may do.
    #[arg(long, value_enum)]
    pub role: Role,
    /// Allow only event types starting with this (repeatable; none: all).
    #[arg(long = "type-prefix")]
    pub type_prefixes: Vec<String>,
    /// Allow only event sources starting with this (repeatable; none: all).
    #[arg(long = "source-prefix")]
    pub source_prefixes: Vec<String>,
    /// Stop working after this long (`30d`, `12h`, `90s`).
    #[arg(long, value_parser = parse_duration)]
    pub expires: Option<Duration>,
    /// Its own request rate (`100/s`, `6000/m`), instead of `--rate`.
    #[arg(long, value_parser = Rate::parse)]
    pub rate: Option<Rate>,
    /// Its own read byte rate (`8MiB/s`, `1GiB/m`), instead of
    /// `--read-rate`: the bytes of event reads it may take.
    #[arg(long, value_parser = ByteRate::parse)]
    pub read_rate: Option<ByteRate>,
}

/// Why a name, a prefix or an expiry is refused.
#[derive(Debug, thiserror::Error)]
#[error("{}: {}", self.field(), self.reason())]
pub enum SpecError {
    /// The name.
    Name(&'static str),
    /// A prefix.
    Prefix {
        /// Which list.
        field: &'static str,
        /// Why.
        reason: &'static str,
    },
    /// The expiry.
    Expires,
}

impl SpecError {
    /// The field it is about (as `POST /admin/tokens` names it).
    pub fn field(&self) -> &'static str {
        match self {
            SpecError::Name(_) => "name",
            SpecError::Prefix { field, .. } => field,
            SpecError::Expires => "expires",
        }
    }

    /// Why the field is refused.
    pub fn reason(&self) -> &'static str {
        match self {
            SpecError::Name(reason) => reason,
            SpecError::Prefix { reason, .. } => reason,
            SpecError::Expires => "must be more than 0 s and at most 100 years",
        }
    }
}

/// Checks a token's name and scope; shared with `POST /admin/tokens`.
pub fn check_spec(name: &str, scope: &Scope) -> Result<(), SpecError> {
    if name.is_empty() || name.len() > 128 {
        return Err(SpecError::Name("must be 1 to 128 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(SpecError::Name(
            "may hold only A-Z, a-z, 0-9, '.', '_' and '-'",
        ));
    }
    for (field, list) in [
        ("type_prefixes", &scope.type_prefixes),
        ("source_prefixes", &scope.source_prefixes),
    ] {
        if list.len() > 64 {
            return Err(SpecError::Prefix {
                field,
                reason: "at most 64 prefixes",
            });
        }
        if list.iter().any(|p| p.is_empty() || p.chars().count() > 256) {
            return Err(SpecError::Prefix {
                field,
                reason: "each prefix must be 1 to 256 characters (leave the list out to allow all)",
            });
        }
    }
    Ok(())
}

/// The RFC 3339 time `after` from now.
pub fn expiry(after: Duration) -> Result<String, SpecError> {
    let after = chrono::Duration::from_std(after).map_err(|_| SpecError::Expires)?;
    if after <= chrono::Duration::zero() || after > chrono::Duration::days(36_525) {
        return Err(SpecError::Expires);
    }
    Ok(crate::clock::rfc3339(chrono::Utc::now() + after))
}

/// Runs `msgbus token ...`, writing to `out`.
pub fn run(
    cmd: TokenCommand,
    out: &mut dyn Write,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    match cmd {
        TokenCommand::Create(a) => {
            let scope = Scope {
                type_prefixes: a.type_prefixes,
                source_prefixes: a.source_prefixes,
            };
            check_spec(&a.name, &scope)?;
            let expires = a.expires.map(expiry).transpose()?;
            let spec = TokenSpec {
                name: a.name,
                role: a.role,
                scope,
                rate: a.rate,
                read_rate: a.read_rate,
                expires,
            };
            let (record, token) = file::create(&a.data_dir, spec, &crate::clock::now_rfc3339())?;
            writeln!(
                out,
                "created token {:?} ({}), id {}",
                record.name,
                describe(&record),
                record.id
            )?;
            writeln!(out, "the token is shown only now; keep it secret:")?;
            writeln!(out, "{token}")?;
        }
        TokenCommand::List { data_dir } => {
            let records = file::load(&data_dir)?;
            if records.is_empty() {
                writeln!(out, "no tokens")?;
            }
            for r in records {
                writeln!(
                    out,
                    "{}\t{}\tid {}\tcreated {}\texpires {}\tlast used {}",
                    r.name,
                    describe(&r),
                    r.id,
                    r.created,
                    r.expires.as_deref().unwrap_or("never"),
                    r.last_used.as_deref().unwrap_or("never"),
                )?;
            }
        }
        TokenCommand::Revoke { data_dir, name } => {
            let r = file::revoke(&data_dir, &name)?;
            writeln!(
                out,
                "revoked token {:?} (id {}); a running server refuses it within 2 s",
                r.name, r.id
            )?;
        }
    }
    Ok(())
}

/// `role publish, types story.*, rate 100/s`.
fn describe(r: &TokenRecord) -> String {
    let mut s = format!("role {}", r.role.as_str());
    if !r.scope.type_prefixes.is_empty() {
        s += &format!(", types {}", r.scope.type_prefixes.join("* "));
        s.push('*');
    }
    if !r.scope.source_prefixes.is_empty() {
        s += &format!(", sources {}", r.scope.source_prefixes.join("* "));
        s.push('*');
    }
    if let Some(rate) = r.rate {
        s += &format!(", rate {rate}");
    }
    if let Some(rate) = r.read_rate {
        s += &format!(", read rate {rate}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The OpenAPI document limits prefixes in characters (`maxLength`), as
    /// event attributes are limited; a prefix of 256 multi-byte characters
    /// is valid and the 257th is one too many.
    #[test]
    fn prefix_length_counts_characters_not_bytes() {
        let scope = |p: String| Scope {
            type_prefixes: vec![p],
            source_prefixes: vec![],
        };
        assert!(check_spec("ok", &scope("ü".repeat(256))).is_ok());
        assert!(check_spec("ok", &scope("ü".repeat(257))).is_err());
        assert!(check_spec("ok", &scope(String::new())).is_err());
    }
}
