//! Allmende's MLS layer (openmls): one MLS group per pair of organisations
//! exchanging data through the hub, whose members are the nodes involved.
//!
//! - [`MlsNode`]: a node's groups — create with a peer, join from a welcome,
//!   add, remove (a new epoch), apply another member's commit — and its
//!   single-use key packages, replenished automatically.
//! - [`binding`]: leaf credentials bound to the node's certificate, checked
//!   against the certificate seen in a TLS handshake.
//! - [`seal`]: streams sealed chunk by chunk under keys exported from the
//!   current epoch, with an authenticated last chunk.
//! - [`kv`] and [`storage`]: openmls' storage over a small key-value trait,
//!   each operation's writes committed in one atomic batch.
//!
//! Design and threat model: `docs/mls.md`.

pub mod binding;
pub mod kv;
pub mod node;
pub mod seal;
pub mod storage;

#[cfg(test)]
mod tests;

pub use binding::{BindingError, NodeIdentity};
pub use kv::{Batch, Entries, Kv, KvError, KvOp, MemoryKv};
pub use node::{
    Added, Applied, CIPHERSUITE, Created, DEFAULT_POOL, Joined, MemberInfo, MlsError, MlsGroupId,
    MlsNode, Removed,
};
pub use seal::{Chunk, Opener, SealError, Sealer};
