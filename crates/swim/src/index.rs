//! The name → slot index of the membership table: a hash table of 4-byte slot numbers whose
//! keys live in the table itself, so a 10,000-member view costs 5 bytes per member here instead
//! of a second copy of every name.

use hashbrown::HashTable;

use crate::member::Member;

/// Deterministic, fast hash of a member name (FNV-1a, then a 64-bit finalizer).
pub fn name_hash(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

/// Slots of `members` by name.
#[derive(Debug, Default)]
pub struct NameIndex {
    table: HashTable<u32>,
}

impl NameIndex {
    /// Entries.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Slots allocated.
    pub fn capacity(&self) -> usize {
        self.table.capacity()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// The slot of `name`.
    pub fn get(&self, members: &[Member], name: &str) -> Option<u32> {
        self.table
            .find(name_hash(name), |&i| &*members[i as usize].name == name)
            .copied()
    }

    /// Indexes slot `i`, which `members` already holds.
    pub fn insert(&mut self, members: &[Member], i: u32) {
        let hash = name_hash(&members[i as usize].name);
        self.table
            .insert_unique(hash, i, |&j| name_hash(&members[j as usize].name));
    }

    /// Makes room for `additional` more entries.
    pub fn reserve(&mut self, members: &[Member], additional: usize) {
        self.table
            .reserve(additional, |&j| name_hash(&members[j as usize].name));
    }

    /// Unindexes slot `i` (still present in `members`).
    pub fn remove(&mut self, members: &[Member], i: u32) {
        let hash = name_hash(&members[i as usize].name);
        if let Ok(entry) = self.table.find_entry(hash, |&j| j == i) {
            entry.remove();
        }
    }

    /// Records that the member in slot `from` moves to slot `to` (call before the move).
    pub fn relocate(&mut self, members: &[Member], from: u32, to: u32) {
        let hash = name_hash(&members[from as usize].name);
        if let Some(slot) = self.table.find_mut(hash, |&j| j == from) {
            *slot = to;
        }
    }
}
