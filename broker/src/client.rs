//! Client profiles for the CLI: which node to talk to and with which
//! certificate. Read from `--profile FILE` (TOML) or from the environment
//! (`ALLMENDE_PROFILE`, or `ALLMENDE_ENDPOINT` + `ALLMENDE_CA` +
//! `ALLMENDE_CERT` + `ALLMENDE_KEY`).
//!
//! ```toml
//! endpoint = "https://127.0.0.1:7403"
//! root_ca = "root-ca.crt"
//! cert = "alice.crt"   # leaf + organisation CA
//! key = "alice.key"
//! ```

use crate::tls::{self, ClientIdentity, TlsMaterial};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A client profile with absolute paths.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientProfile {
    pub endpoint: String,
    pub root_ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Why a profile could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("cannot read profile `{path}`: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("profile `{path}`: {message}")]
    Parse { path: PathBuf, message: String },
    #[error(
        "no client profile: pass `--profile FILE` or set ALLMENDE_PROFILE, or ALLMENDE_ENDPOINT, ALLMENDE_CA, ALLMENDE_CERT and ALLMENDE_KEY"
    )]
    Missing,
    #[error("profile endpoint `{0}` must be an https:// URL")]
    Endpoint(String),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot connect to `{endpoint}`: {message}")]
    Connect { endpoint: String, message: String },
}

impl ClientProfile {
    /// Reads a profile file; relative paths are relative to the file.
    pub fn load(path: &Path) -> Result<Self, ProfileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut p: ClientProfile = toml::from_str(&text).map_err(|e| ProfileError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().replace('\n', " | "),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for f in [&mut p.root_ca, &mut p.cert, &mut p.key] {
            if f.is_relative() {
                *f = base.join(&*f);
            }
        }
        p.check()?;
        Ok(p)
    }

    /// The profile from `--profile` or the environment.
    pub fn resolve(flag: Option<&Path>) -> Result<Self, ProfileError> {
        if let Some(p) = flag {
            return Self::load(p);
        }
        if let Ok(p) = std::env::var("ALLMENDE_PROFILE") {
            return Self::load(Path::new(&p));
        }
        let var = |k| std::env::var(k).ok();
        match (
            var("ALLMENDE_ENDPOINT"),
            var("ALLMENDE_CA"),
            var("ALLMENDE_CERT"),
            var("ALLMENDE_KEY"),
        ) {
            (Some(endpoint), Some(ca), Some(cert), Some(key)) => {
                let p = Self {
                    endpoint,
                    root_ca: ca.into(),
                    cert: cert.into(),
                    key: key.into(),
                };
                p.check()?;
                Ok(p)
            }
            _ => Err(ProfileError::Missing),
        }
    }

    fn check(&self) -> Result<(), ProfileError> {
        if !self.endpoint.starts_with("https://") {
            return Err(ProfileError::Endpoint(self.endpoint.clone()));
        }
        Ok(())
    }

    /// Writes the profile as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }

    /// Loads the key material.
    pub fn identity(&self) -> Result<ClientIdentity, ProfileError> {
        Ok(TlsMaterial::load(&self.cert, &self.key, &self.root_ca)?)
    }

    /// Opens an mTLS channel to the profile's node.
    pub async fn connect(&self) -> Result<tonic::transport::Channel, ProfileError> {
        let id = self.identity()?;
        tls::connect(&self.endpoint, &id)
            .await
            .map_err(|e| ProfileError::Connect {
                endpoint: self.endpoint.clone(),
                message: error_chain(&e),
            })
    }
}

/// An error and its sources on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}
