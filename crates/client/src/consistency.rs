//! The consistency context: a guarantee algebra for answers that pass through several hops.
//!
//! - [`ConsistencyLevel`] is a chain (a total order, hence a lattice):
//!   strict-serializable > serializable > snapshot-isolation > read-committed > eventual.
//! - [`ConsistencyContext`] composes by taking the minimum (an answer built from a
//!   serializable read and an eventual cache hit is only eventual) and records every hop.
//! - It travels as two headers, `X-Consistency-Level` and `X-Consistency-Chain`.
//! - [`ConsistencyContext::certify`] checks a requirement and names the hop that broke it.
//! - [`Consistent<T, L>`] carries the level in the type: downgrading is free (a weaker claim is
//!   always true), upgrading needs a re-read through an [`UpgradeGate`].

use std::marker::PhantomData;

/// Guarantee levels, weakest first so that `Ord` matches strength.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConsistencyLevel {
    /// Some replica's value, eventually converging.
    Eventual,
    /// Only committed data, but not a single snapshot.
    ReadCommitted,
    /// One consistent snapshot.
    SnapshotIsolation,
    /// Equivalent to some serial order.
    Serializable,
    /// Serializable and respecting real time (linearizable).
    StrictSerializable,
}

impl ConsistencyLevel {
    /// Every level, weakest first.
    pub const ALL: [ConsistencyLevel; 5] = [
        ConsistencyLevel::Eventual,
        ConsistencyLevel::ReadCommitted,
        ConsistencyLevel::SnapshotIsolation,
        ConsistencyLevel::Serializable,
        ConsistencyLevel::StrictSerializable,
    ];

    /// The level's header spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            ConsistencyLevel::Eventual => "eventual",
            ConsistencyLevel::ReadCommitted => "read-committed",
            ConsistencyLevel::SnapshotIsolation => "snapshot-isolation",
            ConsistencyLevel::Serializable => "serializable",
            ConsistencyLevel::StrictSerializable => "strict-serializable",
        }
    }

    /// Parses a header spelling.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|level| level.as_str() == text.trim())
    }

    /// The lattice meet: the weaker of two levels.
    pub fn meet(self, other: Self) -> Self {
        self.min(other)
    }

    /// The lattice join: the stronger of two levels.
    pub fn join(self, other: Self) -> Self {
        self.max(other)
    }
}

/// Header carrying the composed level.
pub const HEADER_LEVEL: &str = "X-Consistency-Level";
/// Header carrying the chain of hops, `hop=level` separated by commas.
pub const HEADER_CHAIN: &str = "X-Consistency-Chain";
/// Hops kept in a chain at most (a chain is a bounded header).
pub const CHAIN_HOPS_MAX: usize = 32;

/// One hop of a chain.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Hop {
    /// Who produced this part of the answer (a service, a cache, a replica).
    pub name: String,
    /// What it guaranteed.
    pub level: ConsistencyLevel,
}

/// The guarantee of an answer and how it was reached; see the module doc.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConsistencyContext {
    level: ConsistencyLevel,
    chain: Vec<Hop>,
    /// Hops dropped because the chain was full (their levels still count).
    hops_dropped: u32,
}

/// A requirement not met; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("needs {required:?} but got {actual:?} (weakest hop: {weakest_hop:?})")]
pub struct ConsistencyError {
    /// What the caller needed.
    pub required: ConsistencyLevel,
    /// What the answer guarantees.
    pub actual: ConsistencyLevel,
    /// The first hop at the actual level, if the chain names one.
    pub weakest_hop: Option<String>,
}

/// Headers that could not be read; nothing was built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The level header is missing.
    #[error("missing {HEADER_LEVEL}")]
    MissingLevel,
    /// A level is not one of the five spellings.
    #[error("unknown consistency level {0:?}")]
    UnknownLevel(String),
    /// A chain entry is not `hop=level`.
    #[error("malformed chain entry {0:?}")]
    MalformedHop(String),
    /// The level header claims more than the chain supports.
    #[error("level {claimed:?} is stronger than its chain's {chain:?}")]
    LevelAboveChain {
        /// The header's level.
        claimed: ConsistencyLevel,
        /// The chain's minimum.
        chain: ConsistencyLevel,
    },
}

impl ConsistencyContext {
    /// A context for an answer produced entirely by `hop` at `level`.
    pub fn new(hop: impl Into<String>, level: ConsistencyLevel) -> Self {
        Self {
            level,
            chain: vec![Hop {
                name: hop.into(),
                level,
            }],
            hops_dropped: 0,
        }
    }

    /// The composed level.
    pub fn level(&self) -> ConsistencyLevel {
        self.level
    }

    /// The hops, in order.
    pub fn chain(&self) -> &[Hop] {
        &self.chain
    }

    /// Adds a hop: the level becomes the minimum.
    pub fn push(&mut self, hop: impl Into<String>, level: ConsistencyLevel) {
        self.level = self.level.meet(level);
        if self.chain.len() < CHAIN_HOPS_MAX {
            self.chain.push(Hop {
                name: hop.into(),
                level,
            });
        } else {
            self.hops_dropped += 1;
        }
        assert!(self.chain.iter().all(|hop| hop.level >= self.level));
    }

    /// Composes two contexts (an answer built from both): minimum level, chains concatenated.
    pub fn compose(mut self, other: &ConsistencyContext) -> Self {
        for hop in &other.chain {
            self.push(hop.name.clone(), hop.level);
        }
        self.level = self.level.meet(other.level);
        self.hops_dropped += other.hops_dropped;
        self
    }

    /// Checks that the answer guarantees at least `required`.
    ///
    /// # Errors
    /// [`ConsistencyError`] naming the weakest hop when it does not.
    pub fn certify(&self, required: ConsistencyLevel) -> Result<(), ConsistencyError> {
        if self.level >= required {
            return Ok(());
        }
        let weakest_hop = self
            .chain
            .iter()
            .find(|hop| hop.level == self.level)
            .map(|hop| hop.name.clone());
        Err(ConsistencyError {
            required,
            actual: self.level,
            weakest_hop,
        })
    }

    /// The two headers.
    pub fn to_headers(&self) -> [(&'static str, String); 2] {
        let chain: Vec<String> = self
            .chain
            .iter()
            .map(|hop| format!("{}={}", hop.name, hop.level.as_str()))
            .collect();
        [
            (HEADER_LEVEL, self.level.as_str().to_owned()),
            (HEADER_CHAIN, chain.join(",")),
        ]
    }

    /// Reads the headers back (names matched case-insensitively). A missing chain is a chain
    /// of one anonymous hop at the header's level.
    ///
    /// # Errors
    /// [`HeaderError`] when a header is missing, malformed, or claims more than its chain.
    pub fn from_headers<'a>(
        headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, HeaderError> {
        let mut level = None;
        let mut chain_text = None;
        for (name, value) in headers {
            if name.eq_ignore_ascii_case(HEADER_LEVEL) {
                level = Some(value);
            } else if name.eq_ignore_ascii_case(HEADER_CHAIN) {
                chain_text = Some(value);
            }
        }
        let level_text = level.ok_or(HeaderError::MissingLevel)?;
        let level = ConsistencyLevel::parse(level_text)
            .ok_or_else(|| HeaderError::UnknownLevel(level_text.to_owned()))?;
        let Some(chain_text) = chain_text.filter(|text| !text.trim().is_empty()) else {
            return Ok(Self::new("", level));
        };
        let mut chain = Vec::new();
        for entry in chain_text.split(',').take(CHAIN_HOPS_MAX) {
            let (name, hop_level) = entry
                .rsplit_once('=')
                .ok_or_else(|| HeaderError::MalformedHop(entry.into()))?;
            let hop_level = ConsistencyLevel::parse(hop_level)
                .ok_or_else(|| HeaderError::UnknownLevel(hop_level.to_owned()))?;
            chain.push(Hop {
                name: name.trim().to_owned(),
                level: hop_level,
            });
        }
        let chain_level = chain.iter().map(|hop| hop.level).min().unwrap_or(level);
        if level > chain_level {
            return Err(HeaderError::LevelAboveChain {
                claimed: level,
                chain: chain_level,
            });
        }
        Ok(Self {
            level,
            chain,
            hops_dropped: 0,
        })
    }
}

/// A level as a type, for [`Consistent`].
pub trait Level: sealed::Sealed {
    /// The value this type stands for.
    const LEVEL: ConsistencyLevel;
}

/// `Self` is at least as strong as `L`: the downgrades that are free.
pub trait AtLeast<L: Level>: Level {}

mod sealed {
    pub trait Sealed {}
}

macro_rules! levels {
    ($($name:ident => $value:ident),* $(,)?) => {$(
        #[doc = concat!("The type-level [`ConsistencyLevel::", stringify!($value), "`].")]
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {}
        impl sealed::Sealed for $name {}
        impl Level for $name {
            const LEVEL: ConsistencyLevel = ConsistencyLevel::$value;
        }
    )*};
}

levels! {
    Eventual => Eventual,
    ReadCommitted => ReadCommitted,
    SnapshotIsolation => SnapshotIsolation,
    Serializable => Serializable,
    StrictSerializable => StrictSerializable,
}

macro_rules! at_least {
    ($strong:ident: $($weak:ident),*) => {$(
        impl AtLeast<$weak> for $strong {}
    )*};
}

at_least!(StrictSerializable: StrictSerializable, Serializable, SnapshotIsolation, ReadCommitted, Eventual);
at_least!(Serializable: Serializable, SnapshotIsolation, ReadCommitted, Eventual);
at_least!(SnapshotIsolation: SnapshotIsolation, ReadCommitted, Eventual);
at_least!(ReadCommitted: ReadCommitted, Eventual);
at_least!(Eventual: Eventual);

/// A value read at level `L` (known at compile time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consistent<T, L: Level> {
    value: T,
    level: PhantomData<L>,
}

/// Re-reads a value at a stronger level (e.g. a quorum or leader read).
pub trait UpgradeGate<T> {
    /// Why the re-read failed.
    type Error;

    /// Reads the value again, guaranteeing at least `target`; `stale` is the weaker copy.
    ///
    /// # Errors
    /// Whatever the read can fail with.
    fn reread(&self, stale: &T, target: ConsistencyLevel) -> Result<T, Self::Error>;
}

impl<T, L: Level> Consistent<T, L> {
    /// Wraps a value the caller knows was read at `L`, checked against its context.
    ///
    /// # Errors
    /// [`ConsistencyError`] when the context does not certify `L`.
    pub fn certified(value: T, context: &ConsistencyContext) -> Result<Self, ConsistencyError> {
        context.certify(L::LEVEL)?;
        Ok(Self {
            value,
            level: PhantomData,
        })
    }

    /// The level, as a value.
    pub fn level(&self) -> ConsistencyLevel {
        L::LEVEL
    }

    /// The value.
    pub fn get(&self) -> &T {
        &self.value
    }

    /// The value, unwrapped.
    pub fn into_inner(self) -> T {
        self.value
    }

    /// A weaker claim about the same value: always true, so free.
    pub fn downgrade<W: Level>(self) -> Consistent<T, W>
    where
        L: AtLeast<W>,
    {
        Consistent {
            value: self.value,
            level: PhantomData,
        }
    }

    /// A stronger claim: only through a re-read at `S`.
    ///
    /// # Errors
    /// The gate's error when the re-read fails.
    pub fn upgrade<S, G>(self, gate: &G) -> Result<Consistent<T, S>, G::Error>
    where
        S: AtLeast<L>,
        G: UpgradeGate<T>,
    {
        let value = gate.reread(&self.value, S::LEVEL)?;
        Ok(Consistent {
            value,
            level: PhantomData,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ConsistencyLevel as C;
    use proptest::prelude::*;

    #[test]
    fn consistency_order_matches_strength() {
        assert!(C::StrictSerializable > C::Serializable);
        assert!(C::Serializable > C::SnapshotIsolation);
        assert!(C::SnapshotIsolation > C::ReadCommitted);
        assert!(C::ReadCommitted > C::Eventual);
    }

    #[test]
    fn consistency_context_takes_minimum_and_names_weakest_hop() {
        let mut context = ConsistencyContext::new("kv-leader", C::StrictSerializable);
        context.push("cache", C::Eventual);
        context.push("replica", C::SnapshotIsolation);
        assert_eq!(context.level(), C::Eventual);
        let error = context
            .certify(C::ReadCommitted)
            .expect_err("eventual < read-committed");
        assert_eq!(error.weakest_hop.as_deref(), Some("cache"));
        assert!(context.certify(C::Eventual).is_ok());
    }

    #[test]
    fn consistency_headers_round_trip_and_reject_overclaims() {
        let mut context = ConsistencyContext::new("a", C::Serializable);
        context.push("b", C::ReadCommitted);
        let headers = context.to_headers();
        assert_eq!(headers[0], (HEADER_LEVEL, "read-committed".to_owned()));
        assert_eq!(headers[1].1, "a=serializable,b=read-committed");
        let parsed =
            ConsistencyContext::from_headers(headers.iter().map(|(n, v)| (*n, v.as_str())));
        assert_eq!(parsed, Ok(context));
        let overclaim = ConsistencyContext::from_headers([
            ("x-consistency-level", "serializable"),
            ("x-consistency-chain", "a=eventual"),
        ]);
        assert!(matches!(
            overclaim,
            Err(HeaderError::LevelAboveChain { .. })
        ));
        assert_eq!(
            ConsistencyContext::from_headers([(HEADER_LEVEL, "linear")]),
            Err(HeaderError::UnknownLevel("linear".into()))
        );
    }

    struct LeaderRead;

    impl UpgradeGate<u64> for LeaderRead {
        type Error = ();
        fn reread(&self, stale: &u64, target: ConsistencyLevel) -> Result<u64, ()> {
            assert_eq!(target, C::StrictSerializable);
            Ok(stale + 1)
        }
    }

    #[test]
    fn consistent_downgrade_is_free_upgrade_rereads() {
        let context = ConsistencyContext::new("leader", C::Serializable);
        let read: Consistent<u64, Serializable> =
            Consistent::certified(7, &context).expect("serializable certified");
        let weak: Consistent<u64, Eventual> = read.clone().downgrade();
        assert_eq!(weak.level(), C::Eventual);
        let strong: Consistent<u64, StrictSerializable> =
            read.upgrade(&LeaderRead).expect("leader read works");
        assert_eq!(*strong.get(), 8, "upgrade used the re-read value");
        let too_strong: Result<Consistent<u64, StrictSerializable>, _> =
            Consistent::certified(7, &context);
        assert!(too_strong.is_err());
    }

    fn level() -> impl Strategy<Value = ConsistencyLevel> {
        proptest::sample::select(ConsistencyLevel::ALL.to_vec())
    }

    proptest! {
        /// Composition is a meet: commutative, associative, idempotent, and certify agrees
        /// with the minimum of every hop.
        #[test]
        fn consistency_compose_is_a_meet(a in level(), b in level(), c in level()) {
            let ctx = |l| ConsistencyContext::new("h", l);
            prop_assert_eq!(ctx(a).compose(&ctx(b)).level(), ctx(b).compose(&ctx(a)).level());
            prop_assert_eq!(
                ctx(a).compose(&ctx(b)).compose(&ctx(c)).level(),
                ctx(a).compose(&ctx(b).compose(&ctx(c))).level()
            );
            prop_assert_eq!(ctx(a).compose(&ctx(a)).level(), a);
            let all = ctx(a).compose(&ctx(b)).compose(&ctx(c));
            for required in ConsistencyLevel::ALL {
                prop_assert_eq!(all.certify(required).is_ok(), a.min(b).min(c) >= required);
            }
        }
    }
}
