//! Filters compiled once per reader, so matching one event costs O(1).
//!
//! A `type_prefix` can match any number of the interned types. Checking it
//! per event by comparing strings, or by searching a list of matching type
//! ids, made one read over 100,000 distinct types take seconds while it held
//! the index lock. A [`Matcher`] keeps the set of matching type ids as a
//! bitset over the interned ids, built once from the index's log of type ids
//! and extended only by the types interned since (see
//! [`Index::type_log`](super::index::Index)); a stream or a consumer keeps
//! its matcher between reads, so a new event costs one bit test per reader,
//! not a scan of the type table. Exact `type`, `source` and `subject` are
//! one hash lookup per chunk of a read.

use std::sync::{Arc, Mutex};

/// What a reader selects: the filters of `GET /events`, of a stream and of
/// a durable consumer (stored with it in `consumers.json`, hence serde).
/// The one filter type of the store; the HTTP layer parses its query
/// parameters and bodies into it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Filter {
    /// Only events of this exact type.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub ty: Option<String>,
    /// Only events whose type starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub type_prefix: Option<String>,
    /// Only events from this source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Only events with this subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

/// A filter with its compiled state. Cheap to clone (clones share the
/// compiled state, which only ever grows towards the index's current one).
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    filter: Arc<Filter>,
    types: Arc<Mutex<TypeSet>>,
}

impl Matcher {
    /// Compiles `filter` lazily: the type set is built on first use.
    pub fn new(filter: Filter) -> Self {
        Matcher {
            filter: Arc::new(filter),
            types: Arc::default(),
        }
    }

    /// The filter as given.
    pub fn filter(&self) -> &Filter {
        &self.filter
    }

    /// The compiled type set, locked (for one chunk of a read).
    pub(super) fn types(&self) -> std::sync::MutexGuard<'_, TypeSet> {
        super::lock(&self.types)
    }
}

impl From<Filter> for Matcher {
    fn from(f: Filter) -> Self {
        Matcher::new(f)
    }
}

/// The ids of the interned types a `type_prefix` matches, as a bitset.
#[derive(Debug, Default)]
pub struct TypeSet {
    /// The index's type epoch this set was built for; when retention frees
    /// a type id (which a new type may then reuse) the epoch moves and the
    /// set is rebuilt.
    pub(super) epoch: u64,
    /// How far into the index's type log this set has looked.
    pub(super) pos: usize,
    /// Bit `id` is set when type `id` matches.
    bits: Vec<u64>,
    /// Number of bits set.
    count: usize,
}

impl TypeSet {
    /// Forgets everything (the index's type ids were renumbered).
    pub(super) fn reset(&mut self, epoch: u64) {
        self.epoch = epoch;
        self.pos = 0;
        self.bits.clear();
        self.count = 0;
    }

    /// Marks type `id` as matching.
    pub(super) fn insert(&mut self, id: u32) {
        let (word, bit) = ((id / 64) as usize, id % 64);
        if self.bits.len() <= word {
            self.bits.resize(word + 1, 0);
        }
        if self.bits[word] & (1 << bit) == 0 {
            self.bits[word] |= 1 << bit;
            self.count += 1;
        }
    }

    /// True when type `id` matches.
    #[inline]
    pub(super) fn contains(&self, id: u32) -> bool {
        self.bits
            .get((id / 64) as usize)
            .is_some_and(|w| w & (1 << (id % 64)) != 0)
    }

    /// True when no type matches.
    pub(super) fn is_empty(&self) -> bool {
        self.count == 0
    }
}
