//! The directory loop: every refresh interval the node fetches the signed
//! federation directory from the city node (`Federation.GetMembership`
//! over the one peer client, mTLS, the city's certificate authenticated
//! against the membership in force) and hands it to
//! [`crate::directory::Directory::install`], which verifies the root
//! signature and refuses rollback and other federations. Who serves the
//! document does not matter for its authority — only the root signature
//! does —, so a tampered or replayed document is refused and counted, and
//! the node keeps the one it has.

use super::client::{PEER_CALL_TIMEOUT, connect_peer};
use crate::directory::Directory;
use crate::metrics::NodeMetrics;
use crate::pki::Trust;
use allmende_proto::v1 as pb;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Where the directory comes from and how often it is fetched; changed at
/// run time through the sender the node keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectorySource {
    /// `https://…` of the city node; `None`: no fetching.
    pub endpoint: Option<String>,
    pub refresh: Duration,
}

/// The directory fetcher of one node.
#[derive(Debug)]
pub struct DirectoryFetcher {
    pub directory: Arc<Directory>,
    pub trust: Arc<Trust>,
    pub tls: Arc<rustls::ClientConfig>,
    pub metrics: Arc<NodeMetrics>,
}

impl DirectoryFetcher {
    /// Fetches once from `endpoint` and installs what it got. Returns the
    /// version in force afterwards.
    pub async fn refresh(&self, endpoint: &str) -> Result<u64, String> {
        let signed = match self.fetch(endpoint).await {
            Ok(s) => s,
            Err(e) => {
                self.metrics.directory_fetch_failed.inc();
                return Err(e);
            }
        };
        if signed == self.trust.snapshot().signed_json {
            return Ok(self.directory.version());
        }
        self.directory
            .install(&signed, "directory fetch")
            .await
            .map_err(|e| e.to_string())
    }

    async fn fetch(&self, endpoint: &str) -> Result<Vec<u8>, String> {
        let peer = connect_peer(endpoint, self.tls.clone(), &self.trust)
            .await
            .map_err(|e| e.to_string())?;
        let mut client = pb::federation_client::FederationClient::new(peer.channel);
        let resp = tokio::time::timeout(
            PEER_CALL_TIMEOUT,
            client.get_membership(pb::GetMembershipRequest {}),
        )
        .await
        .map_err(|_| format!("directory fetch from `{endpoint}` timed out"))?
        .map_err(|s| format!("directory fetch from `{endpoint}`: {}", s.message()))?;
        Ok(resp.into_inner().signed_membership)
    }

    /// Fetches at every refresh interval (and at once when the source
    /// changes) until shutdown.
    pub async fn run(
        self,
        mut source: watch::Receiver<DirectorySource>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let src = source.borrow_and_update().clone();
            if let Some(endpoint) = &src.endpoint
                && let Err(e) = self.refresh(endpoint).await
            {
                tracing::warn!(error = %e, "directory not refreshed");
            }
            let source_gone = tokio::select! {
                _ = tokio::time::sleep(src.refresh) => false,
                r = source.changed() => r.is_err(),
                _ = shutdown.wait_for(|s| *s) => return,
            };
            if source_gone {
                // The node is going away; wait for its shutdown.
                let _ = shutdown.wait_for(|s| *s).await;
                return;
            }
        }
    }
}
