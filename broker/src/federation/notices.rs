//! Delivery of access notices: the task that empties this node's outbox
//! (`crate::grants::notices`) towards the recipients' nodes.
//!
//! Event-driven: it wakes when a notice enters the outbox or the peer list
//! changes (`Grants::outbox_nudged`; then every waiting notice is tried),
//! and for a notice whose delivery failed, at its retry time (exponential
//! backoff from [`FIRST_RETRY`] up to [`MAX_RETRY`]); no fixed polling. At start it tries every undelivered
//! notice, so a notice written before a restart is sent after it.
//!
//! A notice goes to the configured peers whose certificate, as
//! [`connect_peer`] authenticated it, names the recipient organisation
//! (`Grants.DeliverNotice`); it counts as delivered only when the receiver
//! acknowledged it (after storing and auditing it), and only then is it
//! marked so, durably.

use super::client::{PEER_CALL_TIMEOUT, connect_peer, peer_client_config};
use super::peers::{SharedPeers, snapshot};
use crate::catalog::Catalog;
use crate::grants::{Grants, StoredNotice};
use crate::pki::Trust;
use crate::tls::{TlsError, TlsMaterial};
use allmende_proto::v1 as pb;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// The wait before the first retry of a failed delivery.
pub const FIRST_RETRY: Duration = Duration::from_secs(1);
/// The longest wait between retries.
pub const MAX_RETRY: Duration = Duration::from_secs(300);

/// Delivers this node's access notices.
#[derive(Debug)]
pub struct NoticeDelivery {
    grants: Arc<Grants>,
    catalog: Arc<Catalog>,
    trust: Arc<Trust>,
    tls: Arc<rustls::ClientConfig>,
    peers: SharedPeers,
}

/// The wait after `attempts` failed attempts.
pub fn backoff(attempts: u32) -> Duration {
    let factor = 1u32
        .checked_shl(attempts.saturating_sub(1))
        .unwrap_or(u32::MAX);
    FIRST_RETRY.saturating_mul(factor).min(MAX_RETRY)
}

impl NoticeDelivery {
    /// A delivery task with this node's certificate (`material`, loaded
    /// from `cert_path`); notices are signed with the catalog's node key.
    pub fn new(
        grants: Arc<Grants>,
        catalog: Arc<Catalog>,
        trust: Arc<Trust>,
        material: &TlsMaterial,
        cert_path: &Path,
        peers: SharedPeers,
    ) -> Result<Self, TlsError> {
        Ok(Self {
            grants,
            catalog,
            trust,
            tls: peer_client_config(material, cert_path)?,
            peers,
        })
    }

    /// Runs until shutdown.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        // Failed attempts and the next try, per notice id (in memory: after
        // a restart every undelivered notice is tried at once).
        let mut retry: HashMap<String, (u32, Instant)> = HashMap::new();
        // The organisation each peer endpoint authenticated as.
        let mut orgs: HashMap<String, String> = HashMap::new();
        loop {
            let mut wake: Option<Instant> = None;
            match self.grants.undelivered() {
                Ok(pending) => {
                    retry.retain(|id, _| pending.iter().any(|n| &n.body.id == id));
                    for n in pending {
                        let now = Instant::now();
                        if let Some((_, at)) = retry.get(&n.body.id)
                            && *at > now
                        {
                            wake = Some(wake.map_or(*at, |w| w.min(*at)));
                            continue;
                        }
                        let id = n.body.id.clone();
                        match self.deliver(&n, &mut orgs).await {
                            Ok(()) => {
                                retry.remove(&id);
                                if let Err(e) = self.grants.mark_delivered(&id).await {
                                    tracing::warn!(notice = %id, error = %e, "delivery not recorded; it is sent again");
                                }
                            }
                            Err(e) => {
                                let attempts = retry.get(&id).map_or(0, |r| r.0) + 1;
                                let at = Instant::now() + backoff(attempts);
                                tracing::info!(notice = %id, recipient = %n.body.recipient, attempts, error = %e, "access notice not delivered; retrying");
                                if let Err(e) = self.grants.mark_failed(&id, &e).await {
                                    tracing::warn!(notice = %id, error = %e, "failed delivery not recorded");
                                }
                                retry.insert(id, (attempts, at));
                                wake = Some(wake.map_or(at, |w| w.min(at)));
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "notice outbox unreadable; retrying");
                    wake = Some(Instant::now() + FIRST_RETRY);
                }
            }
            let sleep = async move {
                match wake {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = sleep => {}
                () = self.grants.outbox_nudged().notified() => {
                    // Something changed (a new notice, the peer list): every
                    // waiting notice is tried again now.
                    let now = Instant::now();
                    for r in retry.values_mut() {
                        r.1 = now;
                    }
                }
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }

    /// Sends `n` to a node of its recipient organisation; Ok once one
    /// acknowledged it.
    async fn deliver(
        &self,
        n: &StoredNotice,
        orgs: &mut HashMap<String, String>,
    ) -> Result<(), String> {
        let signed = Grants::signed(self.catalog.signer(), n).map_err(|e| e.to_string())?;
        let recipient = &n.body.recipient;
        let mut last = format!("no configured peer is a node of `{recipient}`");
        for peer in snapshot(&self.peers) {
            if orgs.get(&peer.endpoint).is_some_and(|o| o != recipient) {
                continue;
            }
            let conn = match connect_peer(&peer.endpoint, self.tls.clone(), &self.trust).await {
                Ok(c) => c,
                Err(e) => {
                    last = e.to_string();
                    continue;
                }
            };
            orgs.insert(peer.endpoint.clone(), conn.organisation.clone());
            if &conn.organisation != recipient {
                continue;
            }
            let mut client = pb::grants_client::GrantsClient::new(conn.channel);
            let call = client.deliver_notice(pb::DeliverNoticeRequest {
                body: signed.body.clone(),
                signature: signed.signature.clone(),
                public_key: signed.public_key.clone(),
            });
            match tokio::time::timeout(PEER_CALL_TIMEOUT, call).await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(status)) => {
                    last = format!("{}: {}", peer.name, status.message());
                }
                Err(_) => last = format!("{}: no answer in time", peer.name),
            }
        }
        Err(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_up_to_the_cap() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(5), Duration::from_secs(16));
        assert_eq!(backoff(20), MAX_RETRY);
        assert_eq!(backoff(u32::MAX), MAX_RETRY);
    }
}
