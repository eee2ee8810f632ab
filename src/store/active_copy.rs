//! The writer's own copy of the active segment's durable bytes: what it
//! rewrites the segment file from when the file is damaged, cut or deleted
//! under it (`writer/repair.rs`), and what a seal checks the file against
//! before hashing it into the manifest.
//!
//! The copy lives in an anonymous file in the data directory
//! (`O_TMPFILE`: it has no name, so nothing outside this process can
//! delete, cut or overwrite it, and it disappears with the process), not
//! on the heap. On the heap, a full 64 MiB segment's copy was about a
//! quarter of the resident memory of a 50-million-event store, and it held
//! the same bytes as the recent-events cache a second time. In a file its
//! pages belong to the page cache, which the kernel writes back and evicts
//! under memory pressure. The file is never fsynced: after a crash the copy
//! is not needed, because start-up judges the segment file itself.
//!
//! When no anonymous file can be made or written (no room, no descriptors,
//! a filesystem without temporary files), the copy falls back to memory,
//! which is what it always was; the writer logs it once.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Chunk size of reads and comparisons: a whole-copy read of a 64 MiB
/// segment would allocate and zero 64 MiB each time.
const CHUNK: usize = 1 << 20;

/// The active segment's durable bytes, in an anonymous file or in memory.
#[derive(Debug)]
pub struct ActiveCopy {
    backing: Backing,
    len: u64,
}

#[derive(Debug)]
enum Backing {
    /// An unnamed file in the data directory's file system.
    File(File),
    /// On the heap, when no such file could be made or written.
    Memory(Vec<u8>),
}

impl ActiveCopy {
    /// A copy holding `bytes`, in an anonymous file in `dir` when one can
    /// be made and written, else in memory.
    pub fn new(dir: &Path, bytes: Vec<u8>) -> Self {
        let made = tempfile::tempfile_in(dir).and_then(|f| {
            f.write_all_at(&bytes, 0)?;
            Ok(f)
        });
        match made {
            Ok(f) => ActiveCopy {
                len: bytes.len() as u64,
                backing: Backing::File(f),
            },
            Err(e) => {
                tracing::warn!(error = %e, dir = %dir.display(), "cannot keep the active segment's copy in an anonymous file; keeping it in memory");
                Self::in_memory(bytes)
            }
        }
    }

    /// A copy on the heap.
    pub fn in_memory(bytes: Vec<u8>) -> Self {
        ActiveCopy {
            len: bytes.len() as u64,
            backing: Backing::Memory(bytes),
        }
    }

    /// Bytes held.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the copy is on the heap (its anonymous file failed).
    pub fn is_in_memory(&self) -> bool {
        matches!(self.backing, Backing::Memory(_))
    }

    /// Appends what a commit made durable. If the anonymous file cannot
    /// take it, the copy moves to memory (read back from the file, whose
    /// pages were written moments ago); only if that read fails too is
    /// the error returned, and the copy is then unchanged.
    pub fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match &mut self.backing {
            Backing::Memory(v) => v.extend_from_slice(bytes),
            Backing::File(f) => {
                if let Err(e) = f.write_all_at(bytes, self.len) {
                    let mut held = self.to_vec()?;
                    tracing::warn!(error = %e, "cannot append to the active segment's copy in its anonymous file; keeping it in memory");
                    held.extend_from_slice(bytes);
                    self.backing = Backing::Memory(held);
                }
            }
        }
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Empties the copy for the next segment, keeping its backing.
    pub fn clear(&mut self) {
        match &mut self.backing {
            Backing::Memory(v) => v.clear(),
            Backing::File(f) => {
                if let Err(e) = f.set_len(0) {
                    // Not fatal: the next segment's bytes overwrite the old
                    // ones from offset 0, and `len` says where they end.
                    tracing::debug!(error = %e, "cannot cut the active segment's copy");
                }
            }
        }
        self.len = 0;
    }

    /// The whole copy in memory, for the rare paths that need it at once
    /// (a rewrite of the segment file, hashing it again).
    pub fn to_vec(&self) -> std::io::Result<Vec<u8>> {
        match &self.backing {
            Backing::Memory(v) => Ok(v.clone()),
            Backing::File(f) => {
                let mut out = vec![0u8; usize::try_from(self.len).unwrap_or(usize::MAX)];
                f.read_exact_at(&mut out, 0)?;
                Ok(out)
            }
        }
    }

    /// Whether the file at `path` holds exactly this copy, compared chunk by
    /// chunk.
    pub fn equals_file(&self, path: &Path) -> std::io::Result<bool> {
        let mut f = File::open(path)?;
        if f.metadata()?.len() != self.len {
            return Ok(false);
        }
        let chunk = CHUNK.min(usize::try_from(self.len).unwrap_or(CHUNK));
        let (mut got, mut want) = (vec![0u8; chunk], vec![0u8; chunk]);
        let mut at = 0u64;
        while at < self.len {
            let n = chunk.min(usize::try_from(self.len - at).unwrap_or(chunk));
            let got = &mut got[..n];
            match f.read_exact(got) {
                Ok(()) => {}
                // Cut while being read.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
                Err(e) => return Err(e),
            }
            let want = &mut want[..n];
            self.read_at(want, at)?;
            if got != want {
                return Ok(false);
            }
            at += n as u64;
        }
        // Grown while being read.
        Ok(f.read(&mut [0u8; 1])? == 0)
    }

    fn read_at(&self, buf: &mut [u8], at: u64) -> std::io::Result<()> {
        match &self.backing {
            Backing::Memory(v) => {
                let start = usize::try_from(at).unwrap_or(usize::MAX);
                buf.copy_from_slice(&v[start..start + buf.len()]);
                Ok(())
            }
            Backing::File(f) => f.read_exact_at(buf, at),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copies(dir: &Path, bytes: &[u8]) -> [ActiveCopy; 2] {
        [
            ActiveCopy::new(dir, bytes.to_vec()),
            ActiveCopy::in_memory(bytes.to_vec()),
        ]
    }

    #[test]
    fn a_copy_in_a_file_leaves_no_name_behind_and_holds_what_was_appended() {
        let dir = tempfile::tempdir().unwrap();
        let mut copy = ActiveCopy::new(dir.path(), b"first ".to_vec());
        assert!(!copy.is_in_memory());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        copy.append(b"second").unwrap();
        assert_eq!(copy.len(), 12);
        assert_eq!(copy.to_vec().unwrap(), b"first second");
        copy.clear();
        assert!(copy.is_empty());
        copy.append(b"next").unwrap();
        assert_eq!(copy.to_vec().unwrap(), b"next");
    }

    #[test]
    fn equals_file_finds_every_difference_in_both_backings() {
        let dir = tempfile::tempdir().unwrap();
        // Over two chunks, so a difference past the first chunk counts.
        let bytes: Vec<u8> = (0..(CHUNK + CHUNK / 2)).map(|i| (i % 251) as u8).collect();
        let path = dir.path().join("segment");
        for copy in copies(dir.path(), &bytes) {
            std::fs::write(&path, &bytes).unwrap();
            assert!(copy.equals_file(&path).unwrap());
            let mut flipped = bytes.clone();
            flipped[CHUNK + 7] ^= 1;
            std::fs::write(&path, &flipped).unwrap();
            assert!(!copy.equals_file(&path).unwrap());
            std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
            assert!(!copy.equals_file(&path).unwrap());
            let mut longer = bytes.clone();
            longer.push(b'\n');
            std::fs::write(&path, &longer).unwrap();
            assert!(!copy.equals_file(&path).unwrap());
        }
    }

    #[test]
    fn a_directory_that_takes_no_file_keeps_the_copy_in_memory() {
        let missing = Path::new("/nonexistent/msgbus-active-copy");
        let mut copy = ActiveCopy::new(missing, b"kept".to_vec());
        assert!(copy.is_in_memory());
        copy.append(b" here").unwrap();
        assert_eq!(copy.to_vec().unwrap(), b"kept here");
    }
}
