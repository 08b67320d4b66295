//! RFC 6962 / RFC 9162 Merkle tree over hashes persisted in a store.
//!
//! The tree is never held in memory. The store keeps the hash of every
//! *complete* subtree, keyed by `(level, index)`: the node at level `l` and
//! index `i` covers the leaves `[i·2^l, (i+1)·2^l)`; level 0 holds the leaf
//! hashes. A complete subtree never changes once all its leaves exist, so the
//! store is append-only.
//!
//! * Appending leaf `n` writes the leaf hash plus one node per trailing one
//!   bit of `n` (amortised 2 writes, at most 64), see [`Frontier::append`].
//!   The writes are returned as data so that the caller can put them into the
//!   same store batch as the entry.
//! * The root at any size `n ≤ size` needs `popcount(n)` reads.
//! * Inclusion, consistency and range proofs need O(log n) reads.
//!
//! [`Frontier`] caches the right edge of the tree (at most 64 hashes) so that
//! appends need no reads at all and the current root costs only hashing.

use std::convert::Infallible;

use crate::hash::{Hash, empty_root, node_hash};

/// Read access to the stored complete-subtree hashes.
pub trait HashStore {
    /// Error of the underlying store.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Hash of the complete subtree at `level` and `index` (covering leaves
    /// `[index·2^level, (index+1)·2^level)`), or `None` if it is not stored.
    fn node(&self, level: u8, index: u64) -> Result<Option<Hash>, Self::Error>;
}

impl<S: HashStore + ?Sized> HashStore for &S {
    type Error = S::Error;
    fn node(&self, level: u8, index: u64) -> Result<Option<Hash>, Self::Error> {
        (**self).node(level, index)
    }
}

/// Key of a stored subtree hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeKey {
    /// Height of the subtree (0 = leaf).
    pub level: u8,
    /// Index of the subtree within its level.
    pub index: u64,
}

impl NodeKey {
    /// 9-byte key `level ‖ index (big-endian)`; sorts by level, then index.
    pub fn to_bytes(&self) -> [u8; 9] {
        let mut out = [0u8; 9];
        out[0] = self.level;
        out[1..].copy_from_slice(&self.index.to_be_bytes());
        out
    }

    /// Parses the 9-byte key produced by [`NodeKey::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let (&level, rest) = bytes.split_first()?;
        let index: [u8; 8] = rest.try_into().ok()?;
        Some(NodeKey {
            level,
            index: u64::from_be_bytes(index),
        })
    }

    /// First leaf index covered by this node.
    pub fn first_leaf(&self) -> u64 {
        self.index
            .checked_shl(u32::from(self.level))
            .unwrap_or(u64::MAX)
    }

    /// Last leaf index covered by this node (inclusive).
    pub fn last_leaf(&self) -> u64 {
        let width = 1u64.checked_shl(u32::from(self.level)).unwrap_or(0);
        self.first_leaf().saturating_add(width.saturating_sub(1))
    }
}

/// One hash to persist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeWrite {
    /// Where.
    pub key: NodeKey,
    /// What.
    pub hash: Hash,
}

/// Tree operations over a store failed.
#[derive(Debug, thiserror::Error)]
pub enum TreeError<E: std::error::Error + 'static> {
    /// The store failed.
    #[error("hash store error: {0}")]
    Store(#[source] E),
    /// A hash that must exist is not in the store.
    #[error("hash store has no node at level {level}, index {index}")]
    MissingNode {
        /// Level.
        level: u8,
        /// Index.
        index: u64,
    },
    /// Leaf index not below the tree size.
    #[error("leaf index {index} is not below tree size {size}")]
    IndexOutOfRange {
        /// Index.
        index: u64,
        /// Size.
        size: u64,
    },
    /// Consistency between sizes requested in the wrong order.
    #[error("old tree size {old} is larger than new tree size {new}")]
    SizeOrder {
        /// Old size.
        old: u64,
        /// New size.
        new: u64,
    },
    /// An invalid leaf range.
    #[error("leaf range {start}..{end} is empty or exceeds tree size {size}")]
    InvalidRange {
        /// Start (inclusive).
        start: u64,
        /// End (exclusive).
        end: u64,
        /// Size.
        size: u64,
    },
    /// The tree cannot grow beyond 2^64 - 1 leaves.
    #[error("tree is full")]
    TreeFull,
    /// The frontier does not match its size (corrupt state).
    #[error("frontier of size {size} holds {held} hashes, expected {expected}")]
    CorruptFrontier {
        /// Size.
        size: u64,
        /// Hashes held.
        held: usize,
        /// Hashes expected.
        expected: u32,
    },
}

/// A proof did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// Leaf index not below the tree size.
    #[error("leaf index {index} is not below tree size {size}")]
    IndexOutOfRange {
        /// Index.
        index: u64,
        /// Size.
        size: u64,
    },
    /// The proof has the wrong number of hashes.
    #[error("proof has {got} hashes, {expected} expected")]
    WrongLength {
        /// Expected.
        expected: usize,
        /// Got.
        got: usize,
    },
    /// The recomputed root differs from the expected root.
    #[error("recomputed root {computed} differs from expected root {expected}")]
    RootMismatch {
        /// Computed.
        computed: Hash,
        /// Expected.
        expected: Hash,
    },
    /// The recomputed old root differs.
    #[error("recomputed old root {computed} differs from expected old root {expected}")]
    OldRootMismatch {
        /// Computed.
        computed: Hash,
        /// Expected.
        expected: Hash,
    },
    /// Sizes in the wrong order.
    #[error("old tree size {old} is larger than new tree size {new}")]
    SizeOrder {
        /// Old.
        old: u64,
        /// New.
        new: u64,
    },
    /// Equal sizes but different roots.
    #[error("trees of equal size {size} have different roots")]
    EqualSizeDifferentRoots {
        /// Size.
        size: u64,
    },
    /// The empty tree's root is not SHA-256 of the empty string.
    #[error("root of the empty tree must be {expected}")]
    BadEmptyRoot {
        /// Expected.
        expected: Hash,
    },
    /// Invalid range.
    #[error("leaf range {start}..{end} is empty or exceeds tree size {size}")]
    InvalidRange {
        /// Start.
        start: u64,
        /// End.
        end: u64,
        /// Size.
        size: u64,
    },
}

/// Largest power of two strictly below `n` (`n ≥ 2`).
pub(crate) fn split_point(n: u64) -> u64 {
    1u64 << (63 - (n - 1).leading_zeros())
}

/// The right edge of the tree: the roots of the complete subtrees that make up
/// `[0, size)`, largest first (one per set bit of `size`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Frontier {
    size: u64,
    nodes: Vec<Hash>,
}

impl Frontier {
    /// The empty tree.
    pub fn new() -> Self {
        Frontier::default()
    }

    /// Loads the frontier of a tree of `size` leaves from the store
    /// (`popcount(size)` reads).
    pub fn load<S: HashStore>(store: &S, size: u64) -> Result<Self, TreeError<S::Error>> {
        let mut nodes = Vec::with_capacity(size.count_ones() as usize);
        let mut start = 0u64;
        for level in (0..64u8).rev() {
            if size & (1u64 << level) != 0 {
                nodes.push(read(store, level, start >> level)?);
                start += 1u64 << level;
            }
        }
        Ok(Frontier { size, nodes })
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Root hash of the tree (the empty-tree hash for size 0).
    pub fn root(&self) -> Hash {
        fold_right(&self.nodes)
    }

    /// Appends one leaf hash and pushes the hashes to persist onto `writes`:
    /// the leaf itself (level 0) and every subtree the leaf completes.
    /// Returns the new leaf's index.
    ///
    /// For an all-or-nothing batch, append to a clone and replace the
    /// original only after the store batch is durable.
    pub fn append(
        &mut self,
        leaf: Hash,
        writes: &mut Vec<NodeWrite>,
    ) -> Result<u64, TreeError<Infallible>> {
        let index = self.size;
        self.push(leaf, |level, idx, hash| {
            writes.push(NodeWrite {
                key: NodeKey { level, index: idx },
                hash,
            });
        })?;
        Ok(index)
    }

    /// Appends several leaves; returns all writes in order.
    pub fn append_all<I: IntoIterator<Item = Hash>>(
        &mut self,
        leaves: I,
    ) -> Result<Vec<NodeWrite>, TreeError<Infallible>> {
        let mut writes = Vec::new();
        for leaf in leaves {
            self.append(leaf, &mut writes)?;
        }
        Ok(writes)
    }

    /// Core append; `emit(level, index, hash)` receives each new complete subtree.
    pub(crate) fn push<F: FnMut(u8, u64, Hash)>(
        &mut self,
        leaf: Hash,
        mut emit: F,
    ) -> Result<(), TreeError<Infallible>> {
        let n = self.size;
        let new_size = n.checked_add(1).ok_or(TreeError::TreeFull)?;
        if self.nodes.len() != n.count_ones() as usize {
            return Err(TreeError::CorruptFrontier {
                size: n,
                held: self.nodes.len(),
                expected: n.count_ones(),
            });
        }
        emit(0, n, leaf);
        let mut h = leaf;
        let mut level = 0u8;
        while (n >> level) & 1 == 1 {
            let Some(left) = self.nodes.pop() else {
                return Err(TreeError::CorruptFrontier {
                    size: n,
                    held: 0,
                    expected: n.count_ones(),
                });
            };
            h = node_hash(&left, &h);
            level += 1;
            emit(level, n >> level, h);
        }
        self.nodes.push(h);
        self.size = new_size;
        Ok(())
    }
}

/// Folds complete-subtree roots (largest first) into the RFC 6962 root.
fn fold_right(nodes: &[Hash]) -> Hash {
    let mut it = nodes.iter().rev();
    let Some(last) = it.next() else {
        return empty_root();
    };
    let mut acc = *last;
    for h in it {
        acc = node_hash(h, &acc);
    }
    acc
}

/// RFC 6962 Merkle tree hash of a list of leaf hashes (computed in O(n) time
/// and O(log n) memory).
pub fn root_from_leaves(leaves: &[Hash]) -> Hash {
    let mut f = Frontier::new();
    for l in leaves {
        // Cannot fail: a slice has fewer than 2^64 - 1 elements and the
        // frontier is maintained by `push` itself.
        if f.push(*l, |_, _, _| {}).is_err() {
            return empty_root();
        }
    }
    f.root()
}

fn read<S: HashStore>(store: &S, level: u8, index: u64) -> Result<Hash, TreeError<S::Error>> {
    store
        .node(level, index)
        .map_err(TreeError::Store)?
        .ok_or(TreeError::MissingNode { level, index })
}

/// MTH of the leaves `[lo, hi)`, where `lo` is a multiple of the smallest
/// power of two ≥ `hi - lo` (true for every range in the RFC 6962 recursion).
fn range_hash<S: HashStore>(store: &S, lo: u64, hi: u64) -> Result<Hash, TreeError<S::Error>> {
    let len = hi - lo;
    let mut nodes = Vec::with_capacity(len.count_ones() as usize);
    let mut pos = lo;
    for level in (0..64u8).rev() {
        if len & (1u64 << level) != 0 {
            nodes.push(read(store, level, pos >> level)?);
            pos += 1u64 << level;
        }
    }
    Ok(fold_right(&nodes))
}

/// Root hash of the tree at `size` (reads `popcount(size)` nodes).
pub fn root_at<S: HashStore>(store: &S, size: u64) -> Result<Hash, TreeError<S::Error>> {
    if size == 0 {
        return Ok(empty_root());
    }
    range_hash(store, 0, size)
}

/// RFC 6962 §2.1.1 audit path for leaf `index` in the tree of `size` leaves.
pub fn inclusion_proof<S: HashStore>(
    store: &S,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, TreeError<S::Error>> {
    if index >= size {
        return Err(TreeError::IndexOutOfRange { index, size });
    }
    let mut path = Vec::with_capacity(64);
    let (mut lo, mut hi) = (0u64, size);
    while hi - lo > 1 {
        let k = split_point(hi - lo);
        if index < lo + k {
            path.push(range_hash(store, lo + k, hi)?);
            hi = lo + k;
        } else {
            path.push(read(
                store,
                k.trailing_zeros() as u8,
                lo >> k.trailing_zeros(),
            )?);
            lo += k;
        }
    }
    path.reverse();
    Ok(path)
}

/// RFC 6962 §2.1.2 consistency proof between the trees of `old_size` and
/// `new_size` leaves. Empty when `old_size` is 0 or equal to `new_size`.
pub fn consistency_proof<S: HashStore>(
    store: &S,
    old_size: u64,
    new_size: u64,
) -> Result<Vec<Hash>, TreeError<S::Error>> {
    if old_size > new_size {
        return Err(TreeError::SizeOrder {
            old: old_size,
            new: new_size,
        });
    }
    if old_size == 0 || old_size == new_size {
        return Ok(Vec::new());
    }
    // Iterative SUBPROOF(m, D[lo:hi], b): the hash added at each split comes
    // after the deeper part of the proof, so collect and reverse.
    let mut later = Vec::with_capacity(64);
    let mut terminal = None;
    let (mut lo, mut hi, mut m, mut complete) = (0u64, new_size, old_size, true);
    loop {
        if m == hi - lo {
            if !complete {
                terminal = Some(range_hash(store, lo, hi)?);
            }
            break;
        }
        let k = split_point(hi - lo);
        if m <= k {
            later.push(range_hash(store, lo + k, hi)?);
            hi = lo + k;
        } else {
            later.push(read(
                store,
                k.trailing_zeros() as u8,
                lo >> k.trailing_zeros(),
            )?);
            m -= k;
            lo += k;
            complete = false;
        }
    }
    let mut proof = Vec::with_capacity(later.len() + 1);
    proof.extend(terminal);
    proof.extend(later.into_iter().rev());
    Ok(proof)
}

/// Range proof for the leaves `[start, end)` of the tree of `size` leaves:
/// the hashes of the maximal subtrees of the RFC 6962 tree that lie outside
/// the range, in left-to-right order. Together with the leaf hashes of the
/// range it determines the root (see [`verify_range`]). At most two hashes per
/// tree level.
pub fn range_proof<S: HashStore>(
    store: &S,
    start: u64,
    end: u64,
    size: u64,
) -> Result<Vec<Hash>, TreeError<S::Error>> {
    if start >= end || end > size {
        return Err(TreeError::InvalidRange { start, end, size });
    }
    let mut out = Vec::new();
    range_proof_rec(store, start, end, 0, size, &mut out)?;
    Ok(out)
}

fn range_proof_rec<S: HashStore>(
    store: &S,
    start: u64,
    end: u64,
    lo: u64,
    hi: u64,
    out: &mut Vec<Hash>,
) -> Result<(), TreeError<S::Error>> {
    if hi <= start || lo >= end {
        out.push(range_hash(store, lo, hi)?);
    } else if start <= lo && hi <= end {
        // Inside the range: the verifier computes it from the leaves.
    } else {
        let k = split_point(hi - lo);
        range_proof_rec(store, start, end, lo, lo + k, out)?;
        range_proof_rec(store, start, end, lo + k, hi, out)?;
    }
    Ok(())
}

/// Verifies an inclusion proof (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    let computed = root_from_inclusion(leaf, index, size, proof)?;
    if computed != *root {
        return Err(ProofError::RootMismatch {
            computed,
            expected: *root,
        });
    }
    Ok(())
}

/// Expected length of an inclusion proof.
fn inclusion_len(index: u64, size: u64) -> usize {
    // Height of the lowest common ancestor of `index` and `size - 1`, plus
    // the left siblings above it along the right border.
    let inner = 64 - (index ^ (size - 1)).leading_zeros();
    let border = index.checked_shr(inner).unwrap_or(0).count_ones();
    (inner + border) as usize
}

/// Root implied by an inclusion proof.
pub fn root_from_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
) -> Result<Hash, ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let expected = inclusion_len(index, size);
    if proof.len() != expected {
        return Err(ProofError::WrongLength {
            expected,
            got: proof.len(),
        });
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if snode == 0 {
            return Err(ProofError::WrongLength {
                expected,
                got: proof.len(),
            });
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::WrongLength {
            expected,
            got: proof.len(),
        });
    }
    Ok(r)
}

/// Verifies a consistency proof (RFC 9162 §2.1.4.2).
///
/// Equal sizes need an empty proof and equal roots; old size 0 needs an empty
/// proof and the empty-tree root.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old_size > new_size {
        return Err(ProofError::SizeOrder {
            old: old_size,
            new: new_size,
        });
    }
    if old_size == 0 {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength {
                expected: 0,
                got: proof.len(),
            });
        }
        if *old_root != empty_root() {
            return Err(ProofError::BadEmptyRoot {
                expected: empty_root(),
            });
        }
        return Ok(());
    }
    if old_size == new_size {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength {
                expected: 0,
                got: proof.len(),
            });
        }
        if old_root != new_root {
            return Err(ProofError::EqualSizeDifferentRoots { size: old_size });
        }
        return Ok(());
    }
    let Some((first, rest)) = proof.split_first() else {
        return Err(ProofError::WrongLength {
            expected: 1,
            got: 0,
        });
    };
    // If old_size is a power of two, the old root itself starts the path.
    let (seed, path) = if old_size.is_power_of_two() {
        (*old_root, proof)
    } else {
        (*first, rest)
    };
    let mut fnode = old_size - 1;
    let mut snode = new_size - 1;
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (seed, seed);
    for c in path {
        if snode == 0 {
            return Err(ProofError::WrongLength {
                expected: proof.len().saturating_sub(1),
                got: proof.len(),
            });
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::WrongLength {
            expected: proof.len().saturating_add(1),
            got: proof.len(),
        });
    }
    if fr != *old_root {
        return Err(ProofError::OldRootMismatch {
            computed: fr,
            expected: *old_root,
        });
    }
    if sr != *new_root {
        return Err(ProofError::RootMismatch {
            computed: sr,
            expected: *new_root,
        });
    }
    Ok(())
}

/// Verifies a range proof: `leaves` are the leaf hashes of `[start, start +
/// leaves.len())` in the tree of `size` leaves whose root is `root`.
pub fn verify_range(
    start: u64,
    leaves: &[Hash],
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    let computed = root_from_range(start, leaves, size, proof)?;
    if computed != *root {
        return Err(ProofError::RootMismatch {
            computed,
            expected: *root,
        });
    }
    Ok(())
}

/// Root implied by a range proof.
pub fn root_from_range(
    start: u64,
    leaves: &[Hash],
    size: u64,
    proof: &[Hash],
) -> Result<Hash, ProofError> {
    let count = u64::try_from(leaves.len()).unwrap_or(u64::MAX);
    let end = start.saturating_add(count);
    if leaves.is_empty() || end > size || start.checked_add(count).is_none() {
        return Err(ProofError::InvalidRange { start, end, size });
    }
    let mut cursor = 0usize;
    let r = range_root_rec(start, end, leaves, 0, size, proof, &mut cursor)?;
    if cursor != proof.len() {
        return Err(ProofError::WrongLength {
            expected: cursor,
            got: proof.len(),
        });
    }
    Ok(r)
}

fn range_root_rec(
    start: u64,
    end: u64,
    leaves: &[Hash],
    lo: u64,
    hi: u64,
    proof: &[Hash],
    cursor: &mut usize,
) -> Result<Hash, ProofError> {
    if hi <= start || lo >= end {
        let h = proof.get(*cursor).ok_or(ProofError::WrongLength {
            expected: cursor.saturating_add(1),
            got: proof.len(),
        })?;
        *cursor += 1;
        Ok(*h)
    } else if start <= lo && hi <= end {
        // lo - start and hi - start are below leaves.len() (checked by caller).
        let a = usize::try_from(lo - start).unwrap_or(usize::MAX);
        let b = usize::try_from(hi - start).unwrap_or(usize::MAX);
        let slice = leaves.get(a..b).ok_or(ProofError::InvalidRange {
            start,
            end,
            size: hi,
        })?;
        Ok(root_from_leaves(slice))
    } else {
        let k = split_point(hi - lo);
        let left = range_root_rec(start, end, leaves, lo, lo + k, proof, cursor)?;
        let right = range_root_rec(start, end, leaves, lo + k, hi, proof, cursor)?;
        Ok(node_hash(&left, &right))
    }
}

/// In-memory [`HashStore`] for tests, benchmarks and tools.
#[derive(Debug, Clone, Default)]
pub struct MemoryHashStore {
    levels: Vec<Vec<Hash>>,
}

/// A write to the in-memory store would leave a gap.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("node at level {level}, index {index} would leave a gap in the in-memory store")]
pub struct MemoryStoreGap {
    /// Level.
    pub level: u8,
    /// Index.
    pub index: u64,
}

impl MemoryHashStore {
    /// Empty store.
    pub fn new() -> Self {
        MemoryHashStore::default()
    }

    /// Persists writes (in order). Overwrites existing nodes.
    pub fn apply(&mut self, writes: &[NodeWrite]) -> Result<(), MemoryStoreGap> {
        for w in writes {
            self.set(w.key.level, w.key.index, w.hash)?;
        }
        Ok(())
    }

    /// Sets one node (overwrite allowed; appending only at the end of a level).
    pub fn set(&mut self, level: u8, index: u64, hash: Hash) -> Result<(), MemoryStoreGap> {
        let l = usize::from(level);
        while self.levels.len() <= l {
            self.levels.push(Vec::new());
        }
        let gap = MemoryStoreGap { level, index };
        let i = usize::try_from(index).map_err(|_| gap.clone())?;
        let v = self.levels.get_mut(l).ok_or(gap.clone())?;
        match i.cmp(&v.len()) {
            std::cmp::Ordering::Less => {
                if let Some(slot) = v.get_mut(i) {
                    *slot = hash;
                }
            }
            std::cmp::Ordering::Equal => v.push(hash),
            std::cmp::Ordering::Greater => return Err(gap),
        }
        Ok(())
    }

    /// Number of stored hashes (all levels).
    pub fn len(&self) -> usize {
        self.levels.iter().map(Vec::len).sum()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl HashStore for MemoryHashStore {
    type Error = Infallible;
    fn node(&self, level: u8, index: u64) -> Result<Option<Hash>, Infallible> {
        let Ok(i) = usize::try_from(index) else {
            return Ok(None);
        };
        Ok(self
            .levels
            .get(usize::from(level))
            .and_then(|v| v.get(i))
            .copied())
    }
}

/// A [`MemoryHashStore`] plus its [`Frontier`]: a complete in-memory log tree.
#[derive(Debug, Clone, Default)]
pub struct MemoryTree {
    store: MemoryHashStore,
    frontier: Frontier,
}

impl MemoryTree {
    /// Empty tree.
    pub fn new() -> Self {
        MemoryTree::default()
    }

    /// Appends a leaf hash; returns its index.
    pub fn append(&mut self, leaf: Hash) -> Result<u64, TreeError<Infallible>> {
        let store = &mut self.store;
        let index = self.frontier.size();
        let mut gap = None;
        self.frontier.push(leaf, |level, idx, hash| {
            if let Err(e) = store.set(level, idx, hash) {
                gap = Some(e);
            }
        })?;
        match gap {
            None => Ok(index),
            Some(e) => Err(TreeError::MissingNode {
                level: e.level,
                index: e.index,
            }),
        }
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.frontier.size()
    }

    /// Current root.
    pub fn root(&self) -> Hash {
        self.frontier.root()
    }

    /// The store.
    pub fn store(&self) -> &MemoryHashStore {
        &self.store
    }

    /// Mutable store access (for tamper tests).
    pub fn store_mut(&mut self) -> &mut MemoryHashStore {
        &mut self.store
    }

    /// The frontier.
    pub fn frontier(&self) -> &Frontier {
        &self.frontier
    }
}
