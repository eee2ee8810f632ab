//! Events per source for `/stats` on the NATS backend. Sources are not
//! subjects, so JetStream cannot count them; msgbus counts them itself, in
//! a way that every instance shares and none repeats:
//!
//! - The stream is cut into chunks of [`CHUNK`] seqs. A chunk's counts
//!   never change once its last seq is stored (seqs are never reused), so
//!   the first instance to need a complete chunk counts it (one read of
//!   its messages) and writes the counts to the KV bucket
//!   `<stream>_SOURCES` (key `c.<chunk>`, created only if absent: two
//!   instances counting at once write the same counts and one write wins);
//!   the others read the key instead of the messages.
//! - Each instance keeps one running sum over the complete chunks the
//!   stream fully holds (no per-chunk copy in memory): a chunk that
//!   completes is added, one that retention starts to remove is subtracted
//!   (its counts read from the bucket again).
//! - The newest, incomplete chunk (the tail) is counted by each instance
//!   as it grows, reading only the messages added since its last count;
//!   when it is complete, those counts are the chunk's.
//! - The oldest chunk, once retention has removed its first messages, is
//!   counted again from the stream's first seq whenever that moves (at
//!   most one chunk's messages).
//! - Each refresh reads at most [`READ_PER_REFRESH`] messages and
//!   [`KV_PER_REFRESH`] chunk keys; what is not counted yet (a large stream
//!   just after a start) is summed under `other`, so the counts always add
//!   up to the stream's total.
//! - Chunk keys do not outlive their chunks for long: once an instance
//!   has seen the stream's oldest whole chunk move past a chunk at least
//!   [`PURGE_AFTER`] ago (retention took it; every instance subtracts it
//!   at its next refresh, seconds later), it purges the chunk's key from
//!   the bucket ([`purge_old_chunks`], a few hundred a refresh, from the
//!   bucket's `purged` mark on), so the bucket holds about the chunks the
//!   stream holds, not every chunk ever stored. An instance that still
//!   needed a purged key (stalled that long) starts its sum again from the
//!   keys of the chunks held, as it does when a key is missing.
//! - The running sum names at most [`MAX_SUMMED_SOURCES`] sources: beyond
//!   that its least used are folded into one count, also shown under
//!   `other`, so a publisher sending a new source with every event does
//!   not grow an instance's memory with the stream.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_nats::jetstream::kv;
use bytes::Bytes;

use super::{head_of, lock, Shared};
use crate::store::{Filter, Matcher, StoreError};

/// Seqs per chunk: the unit counted once and kept in the KV bucket.
pub(super) const CHUNK: u64 = 1000;

/// Most messages one refresh reads.
const READ_PER_REFRESH: u64 = 50 * CHUNK;

/// Most chunk keys one refresh reads from the bucket.
const KV_PER_REFRESH: u64 = 5000;

/// Most sources the running sum names (see [`Summed`]).
const MAX_SUMMED_SOURCES: usize = 10_000;

/// How long after an instance saw retention take a chunk it purges the
/// chunk's key: every instance refreshes (and subtracts the chunk) every
/// few seconds.
pub(super) const PURGE_AFTER: std::time::Duration = std::time::Duration::from_secs(15);

/// Most chunk keys one refresh purges (one JetStream request each).
const PURGE_PER_REFRESH: u64 = 500;

/// The key that holds the chunk below which every chunk key was purged.
const PURGED_KEY: &str = "purged";

/// Events per source, as last counted.
#[derive(Debug, Default)]
pub(super) struct Counted {
    /// `(source, events)`.
    pub sources: Vec<(String, u64)>,
    /// Events not counted yet (or not events msgbus can read).
    pub uncounted: u64,
}

/// One instance's counting state, changed only by [`SourceCounts::refresh`]
/// (one task).
#[derive(Debug, Default)]
struct State {
    /// The complete chunks `[lo, hi)` summed in `sum`.
    lo: u64,
    hi: u64,
    sum: Summed,
    /// The oldest chunk's part from the stream's first seq: `(first seq,
    /// counts)`.
    oldest: Option<(u64, BTreeMap<String, u64>)>,
    /// The newest chunk, as far as this instance has read it.
    tail: Tail,
    /// When this instance saw the oldest whole chunk rise, and to what:
    /// chunk keys below a value seen [`PURGE_AFTER`] ago are purged.
    rises: std::collections::VecDeque<(std::time::Instant, u64)>,
}

/// The newest chunk's counts, as far as this instance has read it.
#[derive(Debug, Default)]
struct Tail {
    /// Its chunk index.
    chunk: u64,
    /// Counted from this seq (its start, or the stream's first seq).
    from: u64,
    /// Counted through this seq.
    through: u64,
    counts: BTreeMap<String, u64>,
}

/// Per-source counts of one instance.
#[derive(Debug, Default)]
pub(super) struct SourceCounts {
    state: tokio::sync::Mutex<State>,
    /// The last result.
    pub counted: Mutex<Arc<Counted>>,
}

/// The chunk holding `seq` (from 1).
fn chunk_of(seq: u64) -> u64 {
    (seq - 1) / CHUNK
}

/// The first seq of chunk `k`.
fn chunk_start(k: u64) -> u64 {
    k * CHUNK + 1
}

fn chunk_key(k: u64) -> String {
    format!("c.{k}")
}

fn add(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (s, n) in from {
        *into.entry(s.clone()).or_default() += n;
    }
}

/// The counts of complete chunks, naming at most [`MAX_SUMMED_SOURCES`]
/// sources: past that, the least used half are folded into `folded`. The
/// events it holds stay exact (named plus folded); a folded source that
/// comes back is counted from then on.
#[derive(Debug, Default)]
struct Summed {
    by_source: BTreeMap<String, u64>,
    folded: u64,
}

impl Summed {
    fn add(&mut self, chunk: &BTreeMap<String, u64>) {
        add(&mut self.by_source, chunk);
        if self.by_source.len() > MAX_SUMMED_SOURCES {
            let mut all: Vec<(String, u64)> =
                std::mem::take(&mut self.by_source).into_iter().collect();
            all.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            self.folded += all
                .drain(MAX_SUMMED_SOURCES / 2..)
                .map(|(_, n)| n)
                .sum::<u64>();
            self.by_source = all.into_iter().collect();
        }
    }

    /// Takes a chunk's counts out: from its sources' named counts, and
    /// what they lack (folded since) from `folded`.
    fn subtract(&mut self, chunk: &BTreeMap<String, u64>) {
        for (s, &n) in chunk {
            let named = self.by_source.get(s).copied().unwrap_or(0);
            if named > n {
                self.by_source.insert(s.clone(), named - n);
            } else {
                self.by_source.remove(s);
                self.folded = self.folded.saturating_sub(n - named);
            }
        }
    }

    fn clear(&mut self) {
        *self = Summed::default();
    }
}

/// Counts the events per source of seqs `from..=to` into `into`; answers
/// the messages read.
async fn count_range(
    s: &Shared,
    from: u64,
    to: u64,
    into: &mut BTreeMap<String, u64>,
) -> Result<u64, StoreError> {
    let all = Matcher::new(Filter::default());
    let mut after = from - 1;
    let mut read = 0;
    while after < to {
        let want = usize::try_from(to - after).unwrap_or(usize::MAX);
        let page = s.read_page(after, &all, want, usize::MAX, false).await?;
        if page.next_after <= after {
            break;
        }
        for e in &page.events {
            if e.seq > to {
                break;
            }
            read += 1;
            if let Some(h) = head_of(&e.bytes) {
                *into.entry(h.source.into_owned()).or_default() += 1;
            }
        }
        after = page.next_after;
    }
    Ok(read)
}

/// Purges the keys of chunks below `below`, at most [`PURGE_PER_REFRESH`]
/// a call, from the bucket's `purged` mark on, then raises the mark by
/// compare-and-set. Instances refreshing at once may purge the same keys
/// (harmless); one that loses the mark's race leaves it to the winner.
/// Purged by subject from the bucket's stream, so no delete marker stays
/// behind per key. Best effort: a failure waits for the next refresh.
async fn purge_old_chunks(bucket: &kv::Store, below: u64) {
    let (mark, revision) = match bucket.entry(PURGED_KEY).await {
        Ok(Some(e)) if e.operation == kv::Operation::Put => (
            std::str::from_utf8(&e.value)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0),
            Some(e.revision),
        ),
        Ok(Some(e)) => (0, Some(e.revision)),
        Ok(None) => (0, None),
        Err(_) => return,
    };
    if mark >= below {
        return;
    }
    let upto = below.min(mark + PURGE_PER_REFRESH);
    for k in mark..upto {
        let subject = format!("{}{}", bucket.prefix, chunk_key(k));
        if bucket.stream.purge().filter(subject).await.is_err() {
            return;
        }
    }
    let value = Bytes::from(upto.to_string());
    let _ =
        super::consumers::compare_and_set(bucket, PURGED_KEY.to_string(), value, revision).await;
}

/// Chunk `k`'s counts from the bucket, if an instance has stored them.
async fn stored(bucket: &kv::Store, k: u64) -> Option<BTreeMap<String, u64>> {
    let v = bucket.get(chunk_key(k)).await.ok()??;
    serde_json::from_slice(&v).ok()
}

impl SourceCounts {
    /// Counts again from the stream's state (first and last seq, messages)
    /// within the budgets, and keeps the result in `counted`.
    pub(super) async fn refresh(
        &self,
        s: &Shared,
        bucket: &kv::Store,
        first: u64,
        last: u64,
        messages: u64,
    ) -> Result<(), StoreError> {
        if messages == 0 || last < first {
            *lock(&self.counted) = Arc::default();
            return Ok(());
        }
        let mut st = self.state.lock().await;
        let mut reads = READ_PER_REFRESH;
        let mut gets = KV_PER_REFRESH;
        let oldest = chunk_of(first);
        // Complete chunks the stream holds whole: [whole_lo, complete).
        let complete = last / CHUNK;
        let whole_lo = if first == chunk_start(oldest) {
            oldest
        } else {
            oldest + 1
        };

        // Chunks retention has started to remove leave the sum; when that
        // is most of it (or a chunk's counts are not in the bucket), the
        // sum starts again.
        if st.lo < whole_lo {
            let leaving = whole_lo.min(st.hi) - st.lo;
            let mut restart = leaving > (st.hi - st.lo) / 2 || leaving > gets;
            while !restart && st.lo < whole_lo.min(st.hi) {
                gets -= 1;
                match stored(bucket, st.lo).await {
                    Some(c) => {
                        st.sum.subtract(&c);
                        st.lo += 1;
                    }
                    None => restart = true,
                }
            }
            if restart || st.lo >= st.hi {
                st.sum.clear();
                st.lo = whole_lo;
                st.hi = whole_lo;
            }
        }

        // The tail this instance counted whole has become a complete chunk:
        // its counts are the chunk's, without reading it again.
        let whole_tail = st.tail.chunk < complete
            && st.tail.from == chunk_start(st.tail.chunk)
            && st.tail.through >= chunk_start(st.tail.chunk + 1) - 1;
        let promoted = whole_tail.then(|| (st.tail.chunk, std::mem::take(&mut st.tail.counts)));
        if let Some((k, c)) = &promoted {
            let value = Bytes::from(serde_json::to_vec(c).unwrap_or_default());
            let _ = bucket.create(chunk_key(*k), value).await;
        }

        // Complete chunks not in the sum yet, in order, within the budgets.
        while st.hi < complete {
            let k = st.hi;
            let counts = match &promoted {
                Some((p, c)) if *p == k => c.clone(),
                _ => {
                    if gets == 0 {
                        break;
                    }
                    gets -= 1;
                    match stored(bucket, k).await {
                        Some(c) => c,
                        None if reads >= CHUNK => {
                            let mut c = BTreeMap::new();
                            let end = chunk_start(k + 1) - 1;
                            reads -= count_range(s, chunk_start(k), end, &mut c)
                                .await?
                                .min(reads);
                            let value = Bytes::from(serde_json::to_vec(&c).unwrap_or_default());
                            // Absent: written; present: another instance
                            // counted it meanwhile (the same counts).
                            let _ = bucket.create(chunk_key(k), value).await;
                            c
                        }
                        None => break,
                    }
                }
            };
            st.sum.add(&counts);
            st.hi += 1;
        }
        // Folded sources are not named: their events count as uncounted
        // below, which `/stats` shows under `other`.
        let mut total = st.sum.by_source.clone();

        // The oldest chunk's part retention left, counted again when the
        // first seq moves.
        if whole_lo > oldest && oldest < complete {
            let end = chunk_start(oldest + 1) - 1;
            let known = st.oldest.as_ref().filter(|(f, _)| *f == first).is_some();
            if !known && reads >= CHUNK {
                let mut c = BTreeMap::new();
                reads -= count_range(s, first, end, &mut c).await?.min(reads);
                st.oldest = Some((first, c));
            }
            if let Some((_, c)) = st.oldest.as_ref().filter(|(f, _)| *f == first) {
                add(&mut total, c);
            }
        }

        // The tail: from the newest chunk's start (or the first seq) to
        // the last seq, counted on from where this instance left off.
        let tail_from = chunk_start(complete).max(first);
        if !(st.tail.chunk == complete
            && st.tail.from == tail_from
            && st.tail.through + 1 >= tail_from)
        {
            st.tail = Tail {
                chunk: complete,
                from: tail_from,
                through: tail_from - 1,
                counts: BTreeMap::new(),
            };
        }
        if last > st.tail.through && reads > 0 {
            let to = last.min(st.tail.through + reads);
            let from = st.tail.through + 1;
            count_range(s, from, to, &mut st.tail.counts).await?;
            st.tail.through = to;
        }
        add(&mut total, &st.tail.counts);
        let counted: u64 = total.values().sum();
        *lock(&self.counted) = Arc::new(Counted {
            sources: total.into_iter().collect(),
            uncounted: messages.saturating_sub(counted),
        });

        // Keys of chunks retention took long enough ago.
        let now = std::time::Instant::now();
        if st.rises.back().is_none_or(|(_, lo)| *lo < whole_lo) {
            st.rises.push_back((now, whole_lo));
        }
        let mut old_enough = None;
        while let Some(&rise) = st.rises.front() {
            if now.duration_since(rise.0) < PURGE_AFTER {
                break;
            }
            old_enough = Some(rise);
            st.rises.pop_front();
        }
        if let Some(rise) = old_enough {
            // The newest rise old enough stays: the next refresh purges on
            // toward it.
            st.rises.push_front(rise);
        }
        drop(st);
        if let Some(lo) = old_enough.map(|r| r.1).filter(|lo| *lo > 0) {
            purge_old_chunks(bucket, lo).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_start_at_seq_1() {
        assert_eq!(chunk_of(1), 0);
        assert_eq!(chunk_of(CHUNK), 0);
        assert_eq!(chunk_of(CHUNK + 1), 1);
        assert_eq!(chunk_start(0), 1);
        assert_eq!(chunk_start(1), CHUNK + 1);
        assert_eq!(chunk_key(7), "c.7");
    }

    #[test]
    fn a_chunk_leaving_the_sum_takes_only_its_own_counts() {
        let mut sum = Summed::default();
        sum.add(&BTreeMap::from([
            ("/a".to_string(), 5),
            ("/b".to_string(), 2),
        ]));
        sum.subtract(&BTreeMap::from([
            ("/b".to_string(), 2),
            ("/c".to_string(), 1),
        ]));
        assert_eq!(sum.by_source, BTreeMap::from([("/a".to_string(), 5)]));
        assert_eq!(sum.folded, 0);
    }

    /// A new source with every event: the sum names at most
    /// [`MAX_SUMMED_SOURCES`], keeps the busy source exact, and its named
    /// and folded events add up to the chunks it holds as they come and go.
    #[test]
    fn a_source_per_event_keeps_the_sum_small_and_exact_in_total() {
        let chunk = |k: u64| -> BTreeMap<String, u64> {
            let mut c: BTreeMap<String, u64> =
                (0..900).map(|i| (format!("/new/{k}/{i}"), 1)).collect();
            c.insert("/busy".into(), 100);
            c
        };
        let held = |s: &Summed| s.by_source.values().sum::<u64>() + s.folded;
        let mut sum = Summed::default();
        for k in 0..40 {
            sum.add(&chunk(k));
            assert!(sum.by_source.len() <= MAX_SUMMED_SOURCES, "chunk {k}");
            assert_eq!(held(&sum), (k + 1) * CHUNK);
        }
        assert_eq!(sum.by_source["/busy"], 4000);
        assert!(sum.folded > 0);
        for k in 0..25 {
            sum.subtract(&chunk(k));
            assert_eq!(held(&sum), (39 - k) * CHUNK, "chunk {k} left");
        }
        assert_eq!(sum.by_source["/busy"], 1500);
    }
}
