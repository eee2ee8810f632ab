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
//!
//! A filter also carries a [`Scope`]: what the reader's credential may see
//! (type prefixes and source prefixes; an empty list allows every value).
//! Every read applies it, whatever the rest of the filter asks:
//!
//! - types: the matcher folds `type_prefix` and the scope's type prefixes
//!   into one list of prefixes, none inside another (their intersection:
//!   `type_prefix` itself when it lies inside a scope prefix, else the
//!   scope prefixes that lie inside it), and the [`TypeSet`] holds the type
//!   ids starting with one of them: one range of the sorted type names per
//!   prefix for a fresh set, the type log for types interned since, under
//!   the same budget. An exact `type` outside the list matches nothing.
//! - sources: an exact `source` outside the scope matches nothing. Without
//!   one, the matcher's [`SourceSet`] remembers per source id whether the
//!   scope allows it, so only the first event from each source costs a look
//!   at its name (sources have no sorted table: a reader pays for the
//!   sources it meets, not for every source stored). Retention frees
//!   source ids for reuse; the index's source epoch then moves and the set
//!   starts over, as the type set does with the type epoch.
//!
//! A filter that matches nothing still lets a read move its cursor to the
//! end, so a scoped long-poll waits for new events instead of spinning.

use std::sync::{Arc, Mutex};

use std::borrow::Cow;

use super::segindex::{Name, Record, TableKind};

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
    /// What the reader may see at all, whatever the fields above ask for
    /// (set from the reader's credential; absent is unrestricted, so a
    /// consumer stored without one reads as before).
    #[serde(default, skip_serializing_if = "Scope::is_unrestricted")]
    pub scope: Scope,
}

/// What a credential may see or write: allowed type prefixes and source
/// prefixes; an empty list allows every value.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Scope {
    /// An event's `type` must start with one of these (empty: any type).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub type_prefixes: Vec<String>,
    /// An event's `source` must start with one of these (empty: any source).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_prefixes: Vec<String>,
}

impl Scope {
    /// True when both lists are empty: every event is allowed.
    pub fn is_unrestricted(&self) -> bool {
        self.type_prefixes.is_empty() && self.source_prefixes.is_empty()
    }

    /// True when an event of type `ty` from `source` is allowed.
    pub fn allows(&self, ty: &str, source: &str) -> bool {
        allows(&self.type_prefixes, ty) && allows(&self.source_prefixes, source)
    }

    /// True when the type `ty` is allowed (whatever the source).
    pub fn allows_type(&self, ty: &str) -> bool {
        allows(&self.type_prefixes, ty)
    }

    /// True when the source `source` is allowed (whatever the type).
    pub fn allows_source(&self, source: &str) -> bool {
        allows(&self.source_prefixes, source)
    }

    /// True when every event `inner` allows is allowed by self (each of
    /// inner's type prefixes starts with one of self's, and same for
    /// sources; an unrestricted list in `inner` is only inside an
    /// unrestricted list in self).
    pub fn contains(&self, inner: &Scope) -> bool {
        contains(&self.type_prefixes, &inner.type_prefixes)
            && contains(&self.source_prefixes, &inner.source_prefixes)
    }
}

/// `value` starts with one of `prefixes`, or `prefixes` is empty.
fn allows(prefixes: &[String], value: &str) -> bool {
    prefixes.is_empty() || prefixes.iter().any(|p| value.starts_with(p.as_str()))
}

/// Every value `inner` allows is one `outer` allows.
fn contains(outer: &[String], inner: &[String]) -> bool {
    outer.is_empty() || (!inner.is_empty() && inner.iter().all(|p| allows(outer, p)))
}

/// A filter with its compiled state. Cheap to clone (clones share the
/// compiled state, which only ever grows towards the index's current one).
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    filter: Arc<Filter>,
    plan: Arc<Plan>,
    types: Arc<Mutex<TypeSet>>,
    sources: Arc<Mutex<SourceSet>>,
    /// The plan for the sealed segment this matcher read last.
    part: Arc<Mutex<Option<Arc<PartPlan>>>>,
}

/// The filter and its scope folded together once per matcher.
#[derive(Debug, Default)]
struct Plan {
    /// A matching type starts with one of these (`type_prefix` narrowed by
    /// the scope's type prefixes; none of them starts with another, so
    /// their ranges of the sorted type names do not overlap); `None` when
    /// neither restricts the type. Empty: no type can match.
    type_prefixes: Option<Vec<String>>,
}

impl Matcher {
    /// Compiles `filter` lazily: the type set is built on first use.
    pub fn new(filter: Filter) -> Self {
        let plan = Plan {
            type_prefixes: type_prefixes(filter.type_prefix.as_deref(), &filter.scope),
        };
        Matcher {
            filter: Arc::new(filter),
            plan: Arc::new(plan),
            types: Arc::default(),
            sources: Arc::default(),
            part: Arc::default(),
        }
    }

    /// The filter as given.
    pub fn filter(&self) -> &Filter {
        &self.filter
    }

    /// True when an event with these attributes matches the whole filter
    /// and its scope: for a backend that filters events one by one (the
    /// NATS JetStream one), not for the file store's indexed reads.
    pub fn matches_event(&self, ty: &str, source: &str, subject: Option<&str>) -> bool {
        let f = &*self.filter;
        f.ty.as_deref().is_none_or(|t| t == ty)
            && self.allows_type(ty)
            && f.source.as_deref().is_none_or(|s| s == source)
            && f.scope.allows_source(source)
            && f.subject.as_deref().is_none_or(|s| Some(s) == subject)
    }

    /// The prefixes a matching type starts with (the filter's
    /// `type_prefix` and its scope's together), `None` when any type does.
    pub(super) fn type_prefixes(&self) -> Option<&[String]> {
        self.plan.type_prefixes.as_deref()
    }

    /// True when an event of type `ty` may match (`type_prefix` and scope;
    /// the exact `type` is not checked here).
    pub(super) fn allows_type(&self, ty: &str) -> bool {
        self.type_prefixes()
            .is_none_or(|ps| ps.iter().any(|p| ty.starts_with(p.as_str())))
    }

    /// The compiled type set, locked (for one chunk of a read).
    pub(super) fn types(&self) -> std::sync::MutexGuard<'_, TypeSet> {
        super::lock(&self.types)
    }

    /// The sources checked against the scope so far, locked (for one
    /// chunk of a read; taken after [`Matcher::types`]).
    pub(super) fn sources(&self) -> std::sync::MutexGuard<'_, SourceSet> {
        super::lock(&self.sources)
    }

    /// The plan of the sealed segment starting at `first_seq`, if it is
    /// the one this matcher read last.
    pub(super) fn part_plan(&self, first_seq: u64) -> Option<Arc<PartPlan>> {
        super::lock(&self.part)
            .as_ref()
            .filter(|p| p.first_seq == first_seq)
            .cloned()
    }

    /// Keeps `plan` for the next chunk (reads move forward, so one is
    /// enough).
    pub(super) fn keep_part_plan(&self, plan: Arc<PartPlan>) {
        *super::lock(&self.part) = Some(plan);
    }
}

/// How a matcher's filter applies to one sealed segment, worked out from
/// the segment's own name tables: which of its type and source ids can
/// match and its subject's id, or that nothing in it can. A rare type then
/// costs nothing in the segments that do not hold it.
#[derive(Debug)]
pub struct PartPlan {
    /// First seq of the segment it was built for.
    pub first_seq: u64,
    ty: Ids,
    source: Ids,
    subject: Option<u32>,
    /// No record of the segment can match.
    pub nothing: bool,
    /// Names looked at to build it (counted against a read's budget).
    pub cost: usize,
}

/// Which ids of one of a segment's name tables match.
#[derive(Debug)]
enum Ids {
    Any,
    Exact(u32),
    Set(Vec<bool>),
}

impl Ids {
    #[inline]
    fn allows(&self, id: u32) -> bool {
        match self {
            Ids::Any => true,
            Ids::Exact(e) => *e == id,
            Ids::Set(set) => set.get(id as usize).copied().unwrap_or(false),
        }
    }

    /// From an exact value (its position in the table, or nothing) or a
    /// predicate over the names; `None` when nothing can match.
    fn of(table: &[Name], exact: Option<&str>, pred: Option<&dyn Fn(&str) -> bool>) -> Option<Ids> {
        if let Some(v) = exact {
            return table
                .iter()
                .position(|n| n.name == v)
                .map(|i| Ids::Exact(i as u32));
        }
        let Some(pred) = pred else {
            return Some(Ids::Any);
        };
        let set: Vec<bool> = table.iter().map(|n| pred(&n.name)).collect();
        set.iter().any(|&b| b).then_some(Ids::Set(set))
    }
}

impl PartPlan {
    /// The plan of `m` for the segment starting at `first_seq`, whose
    /// whole tables `table` gives (from memory, or read from the index
    /// file): each is asked for only when the filter needs it, the
    /// subjects only when something else can match.
    pub fn new<'a, E>(
        m: &Matcher,
        first_seq: u64,
        table: impl Fn(TableKind) -> Result<Cow<'a, [Name]>, E>,
    ) -> Result<PartPlan, E> {
        let f = m.filter();
        // Names looked at, counted against the read's budget.
        let cost = std::cell::Cell::new(0);
        let read = |kind| {
            let t = table(kind)?;
            cost.set(cost.get() + t.len());
            Ok(t)
        };
        let none = || PartPlan {
            first_seq,
            ty: Ids::Any,
            source: Ids::Any,
            subject: None,
            nothing: true,
            cost: cost.get(),
        };
        let allows_type = |t: &str| m.allows_type(t);
        let ty = match &f.ty {
            Some(t) if !m.allows_type(t) => None,
            Some(t) => Ids::of(&read(TableKind::Types)?, Some(t), None),
            None if m.type_prefixes().is_some() => {
                Ids::of(&read(TableKind::Types)?, None, Some(&allows_type))
            }
            None => Some(Ids::Any),
        };
        let Some(ty) = ty else {
            return Ok(none());
        };
        let allows_source = |s: &str| f.scope.allows_source(s);
        let source = match &f.source {
            Some(s) if !f.scope.allows_source(s) => None,
            Some(s) => Ids::of(&read(TableKind::Sources)?, Some(s), None),
            None if !f.scope.source_prefixes.is_empty() => {
                Ids::of(&read(TableKind::Sources)?, None, Some(&allows_source))
            }
            None => Some(Ids::Any),
        };
        let Some(source) = source else {
            return Ok(none());
        };
        let subject = match &f.subject {
            Some(s) => match read(TableKind::Subjects)?.iter().position(|n| n.name == *s) {
                Some(i) => Some(i as u32),
                None => return Ok(none()),
            },
            None => None,
        };
        Ok(PartPlan {
            first_seq,
            ty,
            source,
            subject,
            nothing: false,
            cost: cost.get(),
        })
    }

    /// True when the record `r` of the segment matches.
    #[inline]
    pub fn matches(&self, r: &Record) -> bool {
        !self.nothing
            && self.ty.allows(r.ty)
            && self.source.allows(r.source)
            && self.subject.is_none_or(|s| s == r.subject)
    }
}

/// The prefixes a type must start with to satisfy both `type_prefix` and
/// `scope` (`None`: any type does), none starting with another.
fn type_prefixes(type_prefix: Option<&str>, scope: &Scope) -> Option<Vec<String>> {
    let scoped = &scope.type_prefixes;
    let mut out: Vec<String> = match type_prefix {
        None if scoped.is_empty() => return None,
        None => scoped.clone(),
        Some(p) if allows(scoped, p) => vec![p.to_string()],
        // Only the scope's prefixes inside `p` (a type starting with both
        // `p` and `s` starts with the longer one; neither is inside the
        // other: no type starts with both).
        Some(p) => scoped
            .iter()
            .filter(|s| s.starts_with(p))
            .cloned()
            .collect(),
    };
    // Sorted, a prefix comes before every name that starts with it.
    out.sort();
    out.dedup_by(|later, kept| later.starts_with(kept.as_str()));
    Some(out)
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

/// Which interned source ids a scope's source prefixes allow, learnt one
/// id at a time as a read meets them: the first event from a source costs
/// one look at its name, every later one a bit test. Like [`TypeSet`] it
/// belongs to one index source epoch: when retention frees a source id
/// (which a new source may then reuse) the epoch moves and it starts over.
#[derive(Debug, Default)]
pub struct SourceSet {
    /// The index's source epoch these bits were learnt in.
    pub(super) epoch: u64,
    /// Bit `id` is set once source `id` has been checked.
    known: Vec<u64>,
    /// Bit `id` is set when source `id` is allowed.
    allowed: Vec<u64>,
}

impl SourceSet {
    /// Forgets everything (source ids may have been reused).
    pub(super) fn reset(&mut self, epoch: u64) {
        self.epoch = epoch;
        self.known.clear();
        self.allowed.clear();
    }

    /// Whether source `id` is allowed, if it has been checked.
    #[inline]
    pub(super) fn get(&self, id: u32) -> Option<bool> {
        let (word, bit) = ((id / 64) as usize, 1u64 << (id % 64));
        let known = self.known.get(word).is_some_and(|w| w & bit != 0);
        known.then(|| self.allowed[word] & bit != 0)
    }

    /// Records whether source `id` is allowed.
    pub(super) fn set(&mut self, id: u32, allowed: bool) {
        let (word, bit) = ((id / 64) as usize, 1u64 << (id % 64));
        if self.known.len() <= word {
            self.known.resize(word + 1, 0);
            self.allowed.resize(word + 1, 0);
        }
        self.known[word] |= bit;
        if allowed {
            self.allowed[word] |= bit;
        } else {
            self.allowed[word] &= !bit;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Filter, Scope};

    fn scope(types: &[&str], sources: &[&str]) -> Scope {
        Scope {
            type_prefixes: types.iter().map(|s| s.to_string()).collect(),
            source_prefixes: sources.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn a_scope_allows_events_matching_one_prefix_of_each_list() {
        let all = Scope::default();
        assert!(all.is_unrestricted());
        assert!(all.allows("any", "/any"));
        let s = scope(&["order.", "invoice."], &["/shop/", "/billing"]);
        assert!(!s.is_unrestricted());
        assert!(s.allows("order.created", "/shop/eu"));
        assert!(s.allows("invoice.paid", "/billing"));
        assert!(!s.allows("orders", "/shop/eu"), "the prefix is order.");
        assert!(!s.allows("order.created", "/shop"), "the prefix is /shop/");
        assert!(!s.allows("user.created", "/billing"));
        let types_only = scope(&["a."], &[]);
        assert!(types_only.allows("a.b", "/whatever"));
        assert!(!types_only.allows("b", "/whatever"));
        let sources_only = scope(&[], &["/x"]);
        assert!(sources_only.allows("t", "/x/1"));
        assert!(!sources_only.allows("t", "/y"));
        assert!(
            scope(&[""], &[]).allows("t", "/s"),
            "an empty prefix allows all"
        );
    }

    #[test]
    fn contains_holds_when_every_inner_prefix_is_inside_an_outer_one() {
        let all = Scope::default();
        let s = scope(&["order.", "invoice."], &["/shop"]);
        assert!(all.contains(&all));
        assert!(all.contains(&s), "unrestricted contains everything");
        assert!(!s.contains(&all), "a restricted scope does not contain all");
        assert!(s.contains(&s));
        assert!(s.contains(&scope(&["order.created"], &["/shop/eu"])));
        assert!(s.contains(&scope(&["order.", "invoice.x"], &["/shop", "/shop2"])));
        assert!(
            !s.contains(&scope(&["order"], &["/shop"])),
            "order is wider"
        );
        assert!(!s.contains(&scope(&["order.", "user."], &["/shop"])));
        assert!(
            !s.contains(&scope(&["order."], &[])),
            "any source is wider than /shop"
        );
        let types_only = scope(&["order."], &[]);
        assert!(types_only.contains(&scope(&["order.x"], &["/any"])));
        assert!(types_only.contains(&scope(&["order.x"], &[])));
        assert!(!types_only.contains(&scope(&[], &["/any"])));
    }

    #[test]
    fn a_filter_without_scope_reads_and_writes_as_before() {
        let old = r#"{"type_prefix":"order.","source":"/shop"}"#;
        let f: Filter = serde_json::from_str(old).unwrap();
        assert!(f.scope.is_unrestricted());
        assert_eq!(serde_json::to_string(&f).unwrap(), old);
        let scoped = Filter {
            scope: scope(&["order."], &[]),
            ..f
        };
        let text = serde_json::to_string(&scoped).unwrap();
        assert_eq!(
            text,
            r#"{"type_prefix":"order.","source":"/shop","scope":{"type_prefixes":["order."]}}"#
        );
        assert_eq!(serde_json::from_str::<Filter>(&text).unwrap(), scoped);
    }
}
