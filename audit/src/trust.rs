//! The verifier's trust file (`keys.toml`): which logs and witnesses the
//! person verifying a bundle trusts. Keys are never taken from a bundle.
//!
//! ```toml
//! # Cosignatures required from the listed witnesses (default: all of them).
//! witness_quorum = 2
//!
//! [[log]]
//! origin = "stadt.allmende.example/audit"
//! # Log verifier keys (signature type 0x01); several for key rotation.
//! keys = ["stadt.allmende.example/audit+1a2b3c4d+AV…"]
//!
//! [[witness]]
//! # Witness verifier key (signature type 0x04, cosignature/v1).
//! key = "swm.allmende.example/witness+5e6f7a8b+BP…"
//! ```

use serde::Deserialize;

use crate::note::{KeyError, SignatureType, VerifierKey};

/// A trust file is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    /// Not valid TOML or unknown fields.
    #[error("trust file is not valid: {0}")]
    Toml(String),
    /// A key is malformed.
    #[error("trust file key is malformed: {0}")]
    Key(#[from] KeyError),
    /// A log key has type other than `0x01`.
    #[error("log key `{0}` must be an ed25519 note key (type 0x01)")]
    LogKeyType(String),
    /// A witness key has type other than `0x04`.
    #[error("witness key `{0}` must be a cosignature/v1 key (type 0x04)")]
    WitnessKeyType(String),
    /// No logs listed.
    #[error("trust file lists no logs")]
    NoLogs,
    /// A log without keys.
    #[error("log `{0}` has no keys")]
    NoKeys(String),
    /// A log listed twice.
    #[error("log `{0}` is listed twice")]
    DuplicateLog(String),
    /// Quorum above the number of witnesses.
    #[error("witness quorum {quorum} exceeds the {witnesses} listed witnesses")]
    QuorumTooLarge {
        /// Quorum.
        quorum: usize,
        /// Witnesses.
        witnesses: usize,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TrustToml {
    witness_quorum: Option<usize>,
    #[serde(default)]
    log: Vec<LogToml>,
    #[serde(default)]
    witness: Vec<WitnessToml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogToml {
    origin: String,
    keys: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WitnessToml {
    key: String,
}

/// A trusted log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedLog {
    /// Origin line of its checkpoints.
    pub origin: String,
    /// Its verifier keys (type `0x01`).
    pub keys: Vec<VerifierKey>,
}

/// Keys the verifier trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustFile {
    logs: Vec<TrustedLog>,
    witnesses: Vec<VerifierKey>,
    quorum: usize,
}

impl TrustFile {
    /// Builds a trust file; `quorum = None` requires every witness.
    pub fn new(
        logs: Vec<TrustedLog>,
        witnesses: Vec<VerifierKey>,
        quorum: Option<usize>,
    ) -> Result<Self, TrustError> {
        if logs.is_empty() {
            return Err(TrustError::NoLogs);
        }
        for (i, l) in logs.iter().enumerate() {
            if l.keys.is_empty() {
                return Err(TrustError::NoKeys(l.origin.clone()));
            }
            if logs.iter().take(i).any(|o| o.origin == l.origin) {
                return Err(TrustError::DuplicateLog(l.origin.clone()));
            }
            if let Some(k) = l
                .keys
                .iter()
                .find(|k| k.signature_type() != SignatureType::Ed25519)
            {
                return Err(TrustError::LogKeyType(k.to_vkey()));
            }
        }
        if let Some(k) = witnesses
            .iter()
            .find(|k| k.signature_type() != SignatureType::CosignatureV1)
        {
            return Err(TrustError::WitnessKeyType(k.to_vkey()));
        }
        let quorum = quorum.unwrap_or(witnesses.len());
        if quorum > witnesses.len() {
            return Err(TrustError::QuorumTooLarge {
                quorum,
                witnesses: witnesses.len(),
            });
        }
        Ok(TrustFile {
            logs,
            witnesses,
            quorum,
        })
    }

    /// Parses `keys.toml`.
    pub fn from_toml(text: &str) -> Result<Self, TrustError> {
        let t: TrustToml = toml::from_str(text)
            .map_err(|e| TrustError::Toml(e.to_string().trim_end().to_owned()))?;
        let logs = t
            .log
            .into_iter()
            .map(|l| {
                Ok(TrustedLog {
                    origin: l.origin,
                    keys: l
                        .keys
                        .iter()
                        .map(|k| VerifierKey::parse(k))
                        .collect::<Result<Vec<_>, _>>()?,
                })
            })
            .collect::<Result<Vec<_>, TrustError>>()?;
        let witnesses = t
            .witness
            .iter()
            .map(|w| VerifierKey::parse(&w.key))
            .collect::<Result<Vec<_>, _>>()?;
        TrustFile::new(logs, witnesses, t.witness_quorum)
    }

    /// Renders the trust file as TOML (for `allmende audit trust export`).
    pub fn to_toml(&self) -> String {
        let mut s = format!("witness_quorum = {}\n", self.quorum);
        for l in &self.logs {
            s.push_str("\n[[log]]\n");
            s.push_str(&format!("origin = {}\n", toml_str(&l.origin)));
            let keys: Vec<String> = l.keys.iter().map(|k| toml_str(&k.to_vkey())).collect();
            s.push_str(&format!("keys = [{}]\n", keys.join(", ")));
        }
        for w in &self.witnesses {
            s.push_str("\n[[witness]]\n");
            s.push_str(&format!("key = {}\n", toml_str(&w.to_vkey())));
        }
        s
    }

    /// The trusted log with this origin.
    pub fn log(&self, origin: &str) -> Option<&TrustedLog> {
        self.logs.iter().find(|l| l.origin == origin)
    }

    /// All trusted logs.
    pub fn logs(&self) -> &[TrustedLog] {
        &self.logs
    }

    /// Trusted witnesses.
    pub fn witnesses(&self) -> &[VerifierKey] {
        &self.witnesses
    }

    /// Number of valid cosignatures required.
    pub fn quorum(&self) -> usize {
        self.quorum
    }
}

fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
