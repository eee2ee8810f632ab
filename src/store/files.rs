//! The segment and index files readers have open: one least-recently-used
//! cache with one capacity (`--segment-fd-cache`), so reads hold a bounded
//! number of descriptors however many segments a store has.

use std::collections::VecDeque;
use std::fs::File;
use std::sync::Arc;

/// A cached file: the first seq of its segment, and whether it is the
/// segment's index file rather than the segment.
type FileKey = (u64, bool);

/// Segment files open for reading, the least recently used closed first,
/// so readers hold a bounded number of descriptors however many segments
/// there are. A reader keeps its `Arc<File>` for as long as it reads: a
/// file deleted by retention or replaced by a repair meanwhile is still
/// read whole through it.
#[derive(Debug)]
pub struct SegmentFiles {
    pub(super) capacity: std::sync::atomic::AtomicUsize,
    /// Open files, least recently used first.
    open: std::sync::Mutex<VecDeque<(FileKey, Arc<File>)>>,
}

/// Segment files kept open by default (`--segment-fd-cache`).
pub const DEFAULT_SEGMENT_FD_CACHE: usize = 32;

impl SegmentFiles {
    /// An empty cache keeping at most `capacity` files open.
    pub fn new(capacity: usize) -> Self {
        SegmentFiles {
            capacity: capacity.max(1).into(),
            open: std::sync::Mutex::new(VecDeque::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(FileKey, Arc<File>)>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The open file of the segment starting at `first_seq`, opening
    /// `path` when it is not cached.
    pub fn get(&self, first_seq: u64, path: &std::path::Path) -> std::io::Result<Arc<File>> {
        self.get_file((first_seq, false), path)
    }

    /// The open index file of the sealed segment starting at `first_seq`
    /// (the same cache and capacity as the segments: one budget of
    /// descriptors for readers).
    pub fn get_index(&self, first_seq: u64, path: &std::path::Path) -> std::io::Result<Arc<File>> {
        self.get_file((first_seq, true), path)
    }

    fn get_file(&self, key: FileKey, path: &std::path::Path) -> std::io::Result<Arc<File>> {
        {
            let mut open = self.lock();
            if let Some(i) = open.iter().position(|(k, _)| *k == key) {
                let hit = open.remove(i).expect("position is in range");
                let file = hit.1.clone();
                open.push_back(hit);
                return Ok(file);
            }
        }
        let file = Arc::new(File::open(path)?);
        let mut open = self.lock();
        if !open.iter().any(|(k, _)| *k == key) {
            open.push_back((key, file.clone()));
        }
        let capacity = self.capacity.load(std::sync::atomic::Ordering::Relaxed);
        while open.len() > capacity {
            open.pop_front();
        }
        Ok(file)
    }

    /// Closes the cached file of the segment starting at `first_seq` (it
    /// was replaced: the next read opens the new file).
    pub fn forget(&self, first_seq: u64) {
        self.lock().retain(|((s, _), _)| *s != first_seq);
    }

    /// Closes the cached files of segments starting before `first_seq`
    /// (deleted by retention: their space is freed once no reader holds them).
    pub fn forget_before(&self, first_seq: u64) {
        self.lock().retain(|((s, _), _)| *s >= first_seq);
    }

    /// Files open now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no file is open.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}
