//! Work distribution: which node owns a key. Five algorithms behind one trait,
//! [`Distributor`], with the two measures that tell them apart: balance (max ÷ mean keys per
//! node) and disruption (share of keys that move when a node joins or leaves, against the
//! minimum, which is the joining or leaving node's own share).
//!
//! | algorithm | lookup | balance | disruption |
//! | --- | --- | --- | --- |
//! | [`Ring`] (virtual nodes) | O(log n·v) | ~1 + 1/√v | minimal |
//! | [`Rendezvous`] (HRW) | O(n) | ~1 + 3/√(keys/n) | minimal |
//! | [`Jump`] | O(log n) | ~1 + 3/√(keys/n) | minimal when the last node leaves |
//! | [`Maglev`] | O(1) | ~1 + n/M | small, not minimal |
//! | [`BoundedLoad`] | O(log n·v) | ≤ c by construction | near-minimal |
//!
//! Keys and node ids are `u64`s (hash a name first, e.g. with [`hash_bytes`]).

mod bounded;
mod jump;
mod maglev;
mod rendezvous;
mod ring;

pub use bounded::BoundedLoad;
pub use jump::{Jump, jump_bucket};
pub use maglev::{MAGLEV_TABLE_SIZE, Maglev};
pub use rendezvous::Rendezvous;
pub use ring::Ring;

/// A node's identity (a hash of its name or address).
pub type NodeId = u64;

/// Decides which node owns a key.
pub trait Distributor {
    /// The algorithm's name, for reports.
    fn name(&self) -> &'static str;

    /// Adds a node (no effect if present).
    fn add(&mut self, node: NodeId);

    /// Removes a node (no effect if absent).
    fn remove(&mut self, node: NodeId);

    /// The owner of `key`, or `None` with no nodes. Stateless algorithms answer the same for
    /// the same key and node set; [`BoundedLoad`] also counts the key against the node.
    fn assign(&mut self, key: u64) -> Option<NodeId>;

    /// Forgets per-key load (only [`BoundedLoad`] keeps any).
    fn reset_load(&mut self) {}

    /// Nodes present.
    fn nodes(&self) -> Vec<NodeId>;
}

/// The murmur3 64-bit finalizer: a fast bijective mix of 64 bits.
pub fn mix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// FNV-1a over bytes followed by [`mix64`]: a stable hash for names and keys.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix64(hash)
}

/// Balance of an assignment of `keys` keys.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct BalanceReport {
    /// Most keys on one node.
    pub load_max: u64,
    /// Mean keys per node.
    pub load_mean: f64,
    /// `load_max / load_mean` (1 is perfect).
    pub max_over_mean: f64,
}

/// Assigns keys `0..keys` (mixed) and reports the balance.
///
/// # Panics
/// Panics if the distributor has no nodes.
pub fn balance(distributor: &mut dyn Distributor, keys: u64) -> BalanceReport {
    let nodes = distributor.nodes();
    assert!(!nodes.is_empty(), "balance of an empty distributor");
    distributor.reset_load();
    let mut loads: std::collections::HashMap<NodeId, u64> = nodes.iter().map(|n| (*n, 0)).collect();
    for key in 0..keys {
        let node = distributor.assign(mix64(key)).expect("nodes exist");
        *loads.get_mut(&node).expect("assigned to a known node") += 1;
    }
    let load_max = loads.values().copied().max().unwrap_or(0);
    let load_mean = keys as f64 / nodes.len() as f64;
    BalanceReport {
        load_max,
        load_mean,
        max_over_mean: load_max as f64 / load_mean,
    }
}

/// Keys moved by one membership change.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct DisruptionReport {
    /// Share of keys whose owner changed.
    pub moved_share: f64,
    /// Share that had to move: the keys owned by the added node after, or by the removed
    /// node before.
    pub moved_share_min: f64,
    /// `moved_share / moved_share_min` (1 is minimal).
    pub ratio: f64,
}

/// Assigns keys `0..keys` before and after `change`, and reports how many moved.
pub fn disruption(
    distributor: &mut dyn Distributor,
    keys: u64,
    change: Change,
) -> DisruptionReport {
    distributor.reset_load();
    let before: Vec<Option<NodeId>> = (0..keys).map(|k| distributor.assign(mix64(k))).collect();
    match change {
        Change::Add(node) => distributor.add(node),
        Change::Remove(node) => distributor.remove(node),
    }
    distributor.reset_load();
    let after: Vec<Option<NodeId>> = (0..keys).map(|k| distributor.assign(mix64(k))).collect();
    let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
    let must_move = match change {
        Change::Add(node) => after.iter().filter(|a| **a == Some(node)).count(),
        Change::Remove(node) => before.iter().filter(|b| **b == Some(node)).count(),
    };
    let moved_share = moved as f64 / keys as f64;
    let moved_share_min = must_move as f64 / keys as f64;
    DisruptionReport {
        moved_share,
        moved_share_min,
        ratio: moved_share / moved_share_min,
    }
}

/// A membership change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A node joins.
    Add(NodeId),
    /// A node leaves.
    Remove(NodeId),
}

#[cfg(test)]
mod tests;
