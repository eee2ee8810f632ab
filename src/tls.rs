//! HTTPS: the certificate and key of `--tls-cert`/`--tls-key`, served with
//! rustls (ring provider, TLS 1.2 and 1.3, ALPN `http/1.1` only: the
//! server speaks HTTP/1).
//!
//! The certificate in use sits behind a lock in [`CertStore`], the
//! server's certificate resolver, so [`Tls::reload`] (on SIGHUP, see
//! `app.rs`) swaps it for the handshakes that follow while connections
//! already established keep going. A reload that fails (a missing file, a
//! key that does not parse or does not match the certificate) changes
//! nothing: the old certificate stays in use.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio_rustls::TlsAcceptor;

/// Why the certificate or key could not be loaded. Each names the flag and
/// the file, so the operator knows which one to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file cannot be read.
    #[error("{flag} {}: cannot read the file: {source}", path.display())]
    Read {
        /// `--tls-cert` or `--tls-key`.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not what the flag needs (no PEM certificate, no PEM
    /// private key, a key rustls cannot use).
    #[error("{flag} {}: {reason}", path.display())]
    Invalid {
        /// `--tls-cert` or `--tls-key`.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The key is not the certificate's.
    #[error(
        "--tls-key {} does not match the certificate of --tls-cert {}: {reason}",
        key.display(),
        cert.display()
    )]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls' reason.
        reason: String,
    },
    /// rustls refused the configuration (should not happen with its own
    /// provider's defaults).
    #[error("cannot set up TLS: {0}")]
    Config(String),
}

impl TlsError {
    /// The flag whose file is at fault.
    pub fn flag(&self) -> &'static str {
        match self {
            TlsError::Read { flag, .. } | TlsError::Invalid { flag, .. } => flag,
            TlsError::Mismatch { .. } => "--tls-key",
            TlsError::Config(_) => "--tls-cert",
        }
    }
}

/// What was loaded, for the log.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Certificates in the chain.
    pub chain_len: usize,
    /// SHA-256 of the server's certificate (DER), lower-case hex: what
    /// `openssl x509 -noout -fingerprint -sha256` prints, without colons.
    pub fingerprint: String,
}

/// The certificate resolver: the current certificate and key, swapped
/// whole by a reload.
#[derive(Debug)]
pub struct CertStore {
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertStore {
    fn get(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set(&self, key: Arc<CertifiedKey>) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = key;
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

/// The server's TLS: its files, the certificate in use and the acceptor
/// that handshakes with it.
#[derive(Debug)]
pub struct Tls {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    certs: Arc<CertStore>,
    config: Arc<ServerConfig>,
}

impl Tls {
    /// Loads `cert` (PEM chain) and `key` (PEM private key) and builds the
    /// acceptor; an error names the flag and the file at fault.
    pub fn load(cert: &Path, key: &Path) -> Result<Tls, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (certified, _) = load_pair(&provider, cert, key)?;
        let certs = Arc::new(CertStore {
            current: RwLock::new(Arc::new(certified)),
        });
        let mut config = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(certs.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            cert_path: cert.to_path_buf(),
            key_path: key.to_path_buf(),
            provider,
            certs,
            config: Arc::new(config),
        })
    }

    /// What the current certificate is, for the start-up log.
    pub fn current(&self) -> Loaded {
        describe(&self.certs.get().cert)
    }

    /// Rereads both files and, when they load and match, serves them to
    /// every new handshake. On an error the certificate in use stays.
    pub fn reload(&self) -> Result<Loaded, TlsError> {
        let (certified, loaded) = load_pair(&self.provider, &self.cert_path, &self.key_path)?;
        self.certs.set(Arc::new(certified));
        Ok(loaded)
    }

    /// The acceptor for new connections (cheap to clone).
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.clone())
    }
}

fn load_pair(
    provider: &CryptoProvider,
    cert_path: &Path,
    key_path: &Path,
) -> Result<(CertifiedKey, Loaded), TlsError> {
    let chain = read_certs(cert_path)?;
    let key = read_key(key_path)?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::Invalid {
            flag: "--tls-key",
            path: key_path.to_path_buf(),
            reason: format!("not a usable private key: {e}"),
        })?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| TlsError::Mismatch {
        cert: cert_path.to_path_buf(),
        key: key_path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let loaded = describe(&certified.cert);
    Ok((certified, loaded))
}

fn read_file(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        flag,
        path: path.to_path_buf(),
        source,
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let flag = "--tls-cert";
    let invalid = |reason: String| TlsError::Invalid {
        flag,
        path: path.to_path_buf(),
        reason,
    };
    let pem = read_file(flag, path)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("not a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(invalid(
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let flag = "--tls-key";
    let pem = read_file(flag, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Invalid {
        flag,
        path: path.to_path_buf(),
        reason: match e {
            rustls_pki_types::pem::Error::NoItemsFound => {
                "holds no PEM private key (-----BEGIN PRIVATE KEY-----)".into()
            }
            e => format!("not a PEM private key: {e}"),
        },
    })
}

fn describe(chain: &[CertificateDer<'static>]) -> Loaded {
    Loaded {
        chain_len: chain.len(),
        fingerprint: chain
            .first()
            .map(|c| hex::encode(Sha256::digest(c.as_ref())))
            .unwrap_or_default(),
    }
}
