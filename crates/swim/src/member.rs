//! Members as one node sees them, and the precedence rules between updates.

use std::sync::Arc;

use crate::addr::Addr;
use crate::wire::{Meta, Name, Update};

/// What one node believes about a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum State {
    /// Answers probes.
    Alive,
    /// Missed a probe; will be declared failed unless it refutes in time.
    Suspect,
    /// Declared failed.
    Dead,
    /// Left gracefully (or was force-left after failing).
    Left,
}

impl State {
    /// Name used in APIs and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Alive => "alive",
            Self::Suspect => "suspect",
            Self::Dead => "failed",
            Self::Left => "left",
        }
    }

    /// Alive and suspect members are probed and gossiped to.
    pub fn is_reachable(self) -> bool {
        matches!(self, Self::Alive | Self::Suspect)
    }
}

/// One entry of the membership table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Unique name.
    pub name: Name,
    /// Gossip address.
    pub addr: Addr,
    /// Run of the process (a restart picks a larger one).
    pub generation: u64,
    /// Refutation counter within the generation.
    pub incarnation: u32,
    /// Current belief.
    pub state: State,
    /// When this node adopted the current state (caller's clock, µs).
    pub state_since: u64,
    /// Metadata.
    pub meta: Arc<Meta>,
}

impl Member {
    /// The update that describes this member fully (what push-pull sends).
    pub fn record(&self, from: &Name) -> Update {
        match self.state {
            State::Alive => Update::Alive {
                name: self.name.clone(),
                addr: self.addr,
                generation: self.generation,
                incarnation: self.incarnation,
                meta: self.meta.clone(),
            },
            State::Suspect => Update::Suspect {
                name: self.name.clone(),
                generation: self.generation,
                incarnation: self.incarnation,
                from: from.clone(),
            },
            State::Dead => Update::Dead {
                name: self.name.clone(),
                generation: self.generation,
                incarnation: self.incarnation,
                from: from.clone(),
            },
            State::Left => Update::Left {
                name: self.name.clone(),
                generation: self.generation,
                incarnation: self.incarnation,
            },
        }
    }

    /// The (generation, incarnation) version of this entry.
    pub fn version(&self) -> (u64, u32) {
        (self.generation, self.incarnation)
    }
}

/// The contribution of one member to the view digest: equal views have equal digests,
/// whatever the order they were learned in. Suspect counts as alive (a suspicion is a
/// transient local opinion).
pub fn digest_of(name: &str, generation: u64, incarnation: u32, state: State) -> u64 {
    let class = match state {
        State::Alive | State::Suspect => 0u64,
        State::Dead => 1,
        State::Left => 2,
    };
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = mix(h ^ generation);
    mix(h ^ ((u64::from(incarnation) << 2) | class))
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
