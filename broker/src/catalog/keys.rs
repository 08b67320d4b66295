//! The layout of the `catalog` table: its keys and the records stored
//! under them (the node's signing key and version, entries and removals,
//! what is known of each peer).

use super::{PeerState, SignedRecord};
use crate::store::Key;
use serde::{Deserialize, Serialize};

/// Keys of the `catalog` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum CatalogKey {
    /// Node facts: signing key, local version.
    Meta(String),
    /// An entry or removal by (owner organisation, dataset id).
    Entry(String, String),
    /// What this node knows of a peer's catalog, by (organisation, node).
    Peer(String, String),
}

impl Key for CatalogKey {
    fn encode(&self) -> Vec<u8> {
        let (tag, parts): (u8, Vec<&str>) = match self {
            CatalogKey::Meta(a) => (b'm', vec![a]),
            CatalogKey::Entry(a, b) => (b'e', vec![a, b]),
            CatalogKey::Peer(a, b) => (b'p', vec![a, b]),
        };
        let mut v = vec![tag];
        for p in parts {
            v.push(0);
            v.extend_from_slice(p.as_bytes());
        }
        v
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let (tag, rest) = bytes.split_first()?;
        let rest = rest.strip_prefix(&[0])?;
        let parts: Vec<String> = rest
            .split(|b| *b == 0)
            .map(|p| String::from_utf8(p.to_vec()).ok())
            .collect::<Option<_>>()?;
        match (tag, parts.as_slice()) {
            (b'm', [a]) => Some(CatalogKey::Meta(a.clone())),
            (b'e', [a, b]) => Some(CatalogKey::Entry(a.clone(), b.clone())),
            (b'p', [a, b]) => Some(CatalogKey::Peer(a.clone(), b.clone())),
            _ => None,
        }
    }
}

pub(super) const META_SIGNING_KEY: &str = "signing_key";
pub(super) const META_LOCAL_VERSION: &str = "local_version";

/// Values of the `catalog` table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(super) enum CatalogRecord {
    SigningKey { pkcs8_hex: String },
    LocalVersion { version: u64 },
    Entry(StoredEntry),
    Peer(PeerState),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct StoredEntry {
    pub(super) record: SignedRecord,
    /// The node that served it (`None` for this node's own entries).
    pub(super) received_from: Option<String>,
    pub(super) received_at_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        for k in [
            CatalogKey::Meta("x".into()),
            CatalogKey::Entry("swm".into(), "a-b".into()),
            CatalogKey::Peer("stadt".into(), "stadt-1".into()),
        ] {
            assert_eq!(CatalogKey::decode(&k.encode()), Some(k));
        }
        assert_eq!(CatalogKey::decode(b"e\0only-one"), None);
        assert_eq!(CatalogKey::decode(b""), None);
    }
}
