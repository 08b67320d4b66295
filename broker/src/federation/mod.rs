//! The federation layer: this node's clients of other nodes. One peer TLS
//! client ([`client::connect_peer`]: mTLS with the node's certificate, the
//! server's certificate authenticated against the signed membership), one
//! peer list ([`peers::SharedPeers`], and the [`peers::Peers`] met through
//! `Federation.Hello`), and the background tasks that dial peers: the catalog
//! [`replicator`], the audit [`witness`] loop and the delivery of access
//! [`notices`], and the [`directory`] loop that fetches the signed
//! federation directory from the city node, and the [`relay`] calls (to the
//! hub, from the hub to the owner) with the relay task.
//!
//! Layering: the gRPC server (`rpc`) may use this module (e.g. `Catalog.Notify`
//! triggers the replicator); this module never uses `rpc`. Server handlers
//! stay in `rpc`; what the tasks decide and persist stays in the domain
//! modules (`catalog`, `audit::witness`).

pub mod client;
pub mod directory;
pub mod notices;
pub mod peers;
pub mod relay;
pub mod replicator;
pub mod witness;
