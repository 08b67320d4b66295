//! Witness state: what this node cosigned of its peers' logs (records and
//! pinned keys in the `witness_state` tree), the findings of this node's
//! log, and the decisions of witnessing that need no network — whether a
//! peer's checkpoint is consistent with what was cosigned before, and
//! whether a witness saw more of this node's own log than it holds
//! (rollback). The loop that dials the peers is `federation::witness`.
//!
//! Keys: a peer's log key and witness key are pinned to the peer (by its
//! certificate identity) on first use and must not change afterwards.

use super::AuditLog;
use crate::pki::Principal;
use crate::store::{Store, StoreError, Table, TableName, WriteBatch};
use allmende_audit::{Hash, TreeHead, VerifierKey, WitnessState};
use serde::{Deserialize, Serialize};

/// What this node last cosigned of a peer's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WitnessRecord {
    pub origin: String,
    pub size: u64,
    pub root_hex: String,
    pub note: String,
}

fn table(store: &Store) -> Result<Table<String, WitnessRecord>, StoreError> {
    store.table(TableName::WitnessState)
}

fn pins(store: &Store) -> Result<Table<String, String>, StoreError> {
    store.table(TableName::WitnessState)
}

/// The witness state this node keeps for the log `origin`.
pub fn witnessed(store: &Store, origin: &str) -> Result<Option<WitnessRecord>, StoreError> {
    table(store)?.get(&format!("state:{origin}"))
}

/// Witness keys pinned for the peers that cosign this node's log.
pub fn pinned_witness_keys(store: &Store) -> Result<Vec<String>, StoreError> {
    // The tree also holds witness states (other value types): scan by prefix.
    let raw: crate::store::RawTable<Vec<u8>> = store.raw_table(TableName::WitnessState)?;
    raw.scan_prefix(b"pin-witness:")?
        .into_iter()
        .map(|(_, v)| {
            serde_json::from_slice::<String>(&v).map_err(|e| StoreError::Corrupt {
                table: "witness_state",
                reason: e.to_string(),
            })
        })
        .collect()
}

/// Findings of this node's audit log (split views seen, own rollback).
pub fn findings(log: &AuditLog) -> Result<Vec<String>, crate::locks::Poisoned> {
    log.findings()
}

/// Why a witness key was not pinned.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// The calling node pinned another key before.
    #[error("this node presented another witness key before; refusing the new one")]
    KeyChanged,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Pins a witness key to the calling node on first use; a different key
/// later is refused.
pub async fn pin_witness_key(
    store: &Store,
    p: &Principal,
    key: &VerifierKey,
) -> Result<(), PinError> {
    let t = pins(store)?;
    let k = format!("pin-witness:{}/{}", p.organisation, p.subject.name());
    let vkey = key.to_vkey();
    match t.get(&k)? {
        Some(pinned) if pinned == vkey => Ok(()),
        Some(_) => Err(PinError::KeyChanged),
        None => {
            let mut b = WriteBatch::new();
            b.put(&t, &k, &vkey)?;
            store.commit_durable(b).await?;
            Ok(())
        }
    }
}

/// A checkpoint a peer served, as it came (wire-free).
#[derive(Debug, Clone, Copy)]
pub struct ServedCheckpoint<'a> {
    pub size: u64,
    pub note: &'a str,
    pub log_vkey: &'a str,
    pub consistency_proof: &'a [Vec<u8>],
}

/// A cosignature to hand back to the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cosignature {
    pub size: u64,
    pub cosignature_line: String,
    pub witness_vkey: String,
}

/// Why a checkpoint could not be witnessed (a peer misbehaving is a finding,
/// not an error).
#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("log key: {0}")]
    LogKey(String),
}

/// Witnessing one peer (`peer` = `<org>/<node>` as its certificate proved):
/// what this node cosigned of its log so far.
#[derive(Debug)]
pub struct PeerWitness<'a> {
    log: &'a AuditLog,
    store: &'a Store,
    peer: &'a str,
    pins: Table<String, String>,
    states: Table<String, WitnessRecord>,
    last: Option<WitnessRecord>,
}

impl<'a> PeerWitness<'a> {
    /// Loads what this node cosigned of `peer`'s log.
    pub fn load(log: &'a AuditLog, store: &'a Store, peer: &'a str) -> Result<Self, StoreError> {
        let pins = pins(store)?;
        let states = table(store)?;
        let last = match pins.get(&origin_key(peer))? {
            Some(o) => states.get(&format!("state:{o}"))?,
            None => None,
        };
        Ok(Self {
            log,
            store,
            peer,
            pins,
            states,
            last,
        })
    }

    /// The size of the peer's log this node cosigned (0: none yet).
    pub fn cosigned_size(&self) -> u64 {
        self.last.as_ref().map_or(0, |l| l.size)
    }

    /// The peer says its log is smaller than what this node cosigned.
    pub fn report_shrunk(&self) {
        let (peer, since) = (self.peer, self.cosigned_size());
        self.log.report_finding(format!(
            "peer `{peer}` shows a log smaller than the size {since} this node cosigned: rolled back or forked"
        ));
    }

    /// Checks `served` against what this node cosigned before and the
    /// pinned log key, records it durably and returns the cosignature to
    /// hand back; `None` when there is nothing to cosign (nothing new, or a
    /// finding was reported: another key, split view, bad checkpoint).
    pub async fn cosign(
        &self,
        served: ServedCheckpoint<'_>,
        now_unix_secs: u64,
    ) -> Result<Option<Cosignature>, WitnessError> {
        let peer = self.peer;
        let last = self.last.as_ref();
        if last.is_some_and(|l| l.size == served.size) {
            return Ok(None);
        }
        let key =
            VerifierKey::parse(served.log_vkey).map_err(|e| WitnessError::LogKey(e.to_string()))?;
        let pin_key = format!("pin-log:{peer}");
        match self.pins.get(&pin_key)? {
            Some(p) if p != key.to_vkey() => {
                self.log.report_finding(format!(
                    "peer `{peer}` presented a different log key than before"
                ));
                return Ok(None);
            }
            _ => {}
        }
        let proof: Vec<Hash> = served
            .consistency_proof
            .iter()
            .filter_map(|b| Hash::from_slice(b).ok())
            .collect();
        let last_state = last.and_then(|l| {
            Some(WitnessState {
                origin: l.origin.clone(),
                head: TreeHead {
                    size: l.size,
                    root: Hash::from_hex(&l.root_hex).ok()?,
                },
                note: l.note.clone(),
            })
        });
        let cosigned = match allmende_audit::witness_checkpoint(
            self.log.witness_signer(),
            std::slice::from_ref(&key),
            last_state.as_ref(),
            served.note.as_bytes(),
            &proof,
            now_unix_secs,
        ) {
            Ok(c) => c,
            Err(allmende_audit::WitnessError::SplitView(ev)) => {
                self.log.report_finding(format!(
                    "split view: peer `{peer}` signed two inconsistent checkpoints ({ev:?})"
                ));
                return Ok(None);
            }
            Err(e) => {
                self.log
                    .report_finding(format!("peer `{peer}` checkpoint refused: {e}"));
                return Ok(None);
            }
        };
        // Persist before releasing the cosignature.
        let rec = WitnessRecord {
            origin: cosigned.state.origin.clone(),
            size: cosigned.state.head.size,
            root_hex: cosigned.state.head.root.to_hex(),
            note: cosigned.state.note.clone(),
        };
        let mut b = WriteBatch::new();
        b.put(&self.states, &format!("state:{}", rec.origin), &rec)?;
        b.put(&self.pins, &origin_key(peer), &rec.origin)?;
        b.put(&self.pins, &pin_key, &key.to_vkey())?;
        self.store.commit_durable(b).await?;
        Ok(Some(Cosignature {
            size: rec.size,
            cosignature_line: cosigned.cosignature.to_line(),
            witness_vkey: self.log.witness_vkey(),
        }))
    }
}

fn origin_key(peer: &str) -> String {
    format!("origin:{peer}")
}

/// What a witness answered about this node's own log: whether it cosigned
/// any of it, and the size and root (hex) it cosigned last.
#[derive(Debug, Clone, Copy)]
pub struct OwnWitnessed<'a> {
    pub known: bool,
    pub size: u64,
    pub root_hex: &'a str,
}

/// Compares what the witness `peer` cosigned of this node's log with what
/// the log holds, and reports a rollback (e.g. an old backup restored) as a
/// finding.
pub fn check_own_rollback(log: &AuditLog, peer: &str, seen: OwnWitnessed<'_>) {
    if !seen.known {
        return;
    }
    let Ok(root) = Hash::from_hex(seen.root_hex) else {
        return;
    };
    match allmende_audit::check_rollback(
        log.hash_store(),
        log.size(),
        &[(
            peer.to_owned(),
            TreeHead {
                size: seen.size,
                root,
            },
        )],
    ) {
        Ok(findings) => {
            for f in findings {
                log.report_finding(format!("rollback: {f:?}"));
            }
        }
        Err(e) => log.report_finding(format!("rollback check against `{peer}` failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "test")]
    use super::*;
    use crate::audit::Draft;
    use crate::clock::ManualClock;
    use allmende_audit::EntryKind;
    use tokio::sync::watch;

    const NOW_SECS: u64 = 1_800_000_000;

    async fn open(dir: &std::path::Path, org: &str, node: &str) -> (AuditLog, watch::Sender<bool>) {
        let clock = ManualClock::at_unix_ms(i64::try_from(NOW_SECS).unwrap() * 1000);
        let (log, _, tx) = crate::audit::log::tests::open_as(dir, org, node, clock).await;
        (log, tx)
    }

    async fn grow(log: &AuditLog, n: usize) -> crate::audit::CheckpointRecord {
        for i in 0..n {
            log.append(Draft::new(
                "tum",
                "read",
                &format!("ds-{i}"),
                EntryKind::Decision,
            ))
            .await
            .unwrap();
        }
        log.checkpoint_now().await.unwrap().unwrap()
    }

    fn served<'a>(
        cp: &'a crate::audit::CheckpointRecord,
        vkey: &'a str,
        proof: &'a [Vec<u8>],
    ) -> ServedCheckpoint<'a> {
        ServedCheckpoint {
            size: cp.size,
            note: &cp.note,
            log_vkey: vkey,
            consistency_proof: proof,
        }
    }

    #[tokio::test]
    async fn a_consistent_checkpoint_is_cosigned_once_and_remembered() {
        let (pd, wd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (peer, _p) = open(pd.path(), "tum", "tum-1").await;
        let (me, _w) = open(wd.path(), "swm", "swm-1").await;
        let cp = grow(&peer, 3).await;
        let vkey = peer.log_vkey();

        let w = PeerWitness::load(&me, me.store(), "tum/tum-1").unwrap();
        assert_eq!(w.cosigned_size(), 0);
        let c = w
            .cosign(served(&cp, &vkey, &[]), NOW_SECS)
            .await
            .unwrap()
            .expect("a first checkpoint is cosigned");
        assert_eq!(c.size, cp.size);
        assert_eq!(c.witness_vkey, me.witness_vkey());
        // Durable, and nothing new to cosign for the same size.
        let w = PeerWitness::load(&me, me.store(), "tum/tum-1").unwrap();
        assert_eq!(w.cosigned_size(), cp.size);
        assert_eq!(
            witnessed(me.store(), peer.origin()).unwrap().unwrap().size,
            cp.size
        );
        assert!(
            w.cosign(served(&cp, &vkey, &[]), NOW_SECS)
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            me.findings().unwrap().is_empty(),
            "{:?}",
            me.findings().unwrap()
        );
    }

    #[tokio::test]
    async fn another_log_key_for_the_same_peer_is_a_finding_not_a_cosignature() {
        let (pd, wd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (peer, _p) = open(pd.path(), "tum", "tum-1").await;
        let (me, _w) = open(wd.path(), "swm", "swm-1").await;
        let cp = grow(&peer, 2).await;
        let w = PeerWitness::load(&me, me.store(), "tum/tum-1").unwrap();
        w.cosign(served(&cp, &peer.log_vkey(), &[]), NOW_SECS)
            .await
            .unwrap()
            .unwrap();

        // The same peer identity now presents a grown log under another key.
        let cp2 = grow(&peer, 2).await;
        let w = PeerWitness::load(&me, me.store(), "tum/tum-1").unwrap();
        let other_key = me.log_vkey();
        let r = w
            .cosign(served(&cp2, &other_key, &[]), NOW_SECS)
            .await
            .unwrap();
        assert!(r.is_none());
        assert!(
            me.findings()
                .unwrap()
                .iter()
                .any(|f| f.contains("`tum/tum-1`") && f.contains("different log key")),
            "{:?}",
            me.findings().unwrap()
        );
        // What was cosigned stays as it was.
        let w = PeerWitness::load(&me, me.store(), "tum/tum-1").unwrap();
        assert_eq!(w.cosigned_size(), cp.size);
    }

    #[tokio::test]
    async fn a_witness_that_saw_more_of_the_own_log_reports_a_rollback() {
        let wd = tempfile::tempdir().unwrap();
        let (me, _w) = open(wd.path(), "swm", "swm-1").await;
        let cp = grow(&me, 2).await;
        // A witness that never cosigned anything: nothing to report.
        check_own_rollback(
            &me,
            "tum/tum-1",
            OwnWitnessed {
                known: false,
                size: 0,
                root_hex: "",
            },
        );
        assert!(me.findings().unwrap().is_empty());
        // A witness that cosigned more than the log holds.
        check_own_rollback(
            &me,
            "tum/tum-1",
            OwnWitnessed {
                known: true,
                size: cp.size + 5,
                root_hex: &Hash([7; 32]).to_hex(),
            },
        );
        assert!(
            me.findings()
                .unwrap()
                .iter()
                .any(|f| f.starts_with("rollback:")),
            "{:?}",
            me.findings().unwrap()
        );
    }
}
