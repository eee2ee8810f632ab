//! Access control: tokens with roles and scopes.
//!
//! - [`token`]: the `mb_<id>_<secret>` format, generation, hashing
//! - [`file`]: `auth/tokens.json` (no secrets, mode 0600, replaced
//!   atomically under its own lock), shared by `msgbus token` and the server
//! - [`keyring`]: the server's live view of the tokens, re-read within a
//!   second or two of every change, and the `--auth` mode
//! - [`command`]: `msgbus token create|list|revoke`
//! - [`policy`]: roles, the [`Principal`] a request runs as, what each
//!   route needs
//!
//! The HTTP side (`http::auth`) authenticates each request with the
//! keyring and puts its [`Principal`] in the request's extensions; the
//! handlers narrow reads and check publishes against its scope.

pub mod command;
pub mod file;
pub mod keyring;
pub mod policy;
pub mod token;

pub use crate::config::{AuthMode, Protected};
pub use keyring::{Keyring, Verdict};
pub use policy::{Need, Principal, Role};
