//! The file cache: a byte-budgeted LRU of whole file contents.
//!
//! The contract (`docs/design.md`, "the cache's generation rule"): cached content is served until it is
//! evicted or the administrator sends `SIGHUP`, which clears everything. A
//! read that *started* before a clear must not put its (possibly stale)
//! content back afterwards, so every insert carries the [generation](FileCache::generation)
//! it was started under and is dropped if a clear happened meanwhile.
//!
//! Values are `Arc<[u8]>` (with the file's modification time, for HTTP's
//! `Last-Modified`): a hit hands out a reference count, never a copy,
//! and a buffer being sent stays alive even if the entry is evicted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use lru::LruCache;

/// What a clear removed, for the `cache cleared: ...` log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheUsage {
    /// Number of files dropped.
    pub files: usize,
    /// Bytes those files held.
    pub bytes: u64,
}

/// One cached file: its content and when it was last modified.
#[derive(Debug, Clone)]
pub struct CachedFile {
    /// The content, shared with every response that sends it.
    pub bytes: Arc<[u8]>,
    /// The file's mtime when it was read.
    pub modified: Option<SystemTime>,
}

/// A shared, thread-safe LRU of file contents with a byte budget.
#[derive(Debug)]
pub struct FileCache {
    entries: Mutex<Entries>,
    generation: AtomicU64,
    budget_bytes: u64,
    max_file_bytes: u64,
}

#[derive(Debug)]
struct Entries {
    lru: LruCache<Vec<u8>, CachedFile>,
    bytes: u64,
}

impl FileCache {
    /// A cache holding at most `budget_bytes`, never a file above `max_file_bytes`.
    pub fn new(budget_bytes: u64, max_file_bytes: u64) -> FileCache {
        FileCache {
            entries: Mutex::new(Entries { lru: LruCache::unbounded(), bytes: 0 }),
            generation: AtomicU64::new(0),
            budget_bytes,
            max_file_bytes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Entries> {
        // A panic elsewhere cannot leave the map inconsistent (every update
        // is a few lines with no panics), so a poisoned lock is still usable.
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The content cached under `key`, marking it most recently used.
    pub fn get(&self, key: &[u8]) -> Option<CachedFile> {
        if self.budget_bytes == 0 {
            return None;
        }
        self.lock().lru.get(key).cloned()
    }

    /// Whether a file of `len` bytes is small: read whole into memory and
    /// sent from there (and cached if the budget allows), rather than
    /// streamed from the open file. With the cache off (`--cache-size 0`)
    /// small files are still read whole, so the reading happens where the
    /// model puts reads (a reader thread, the kernel), not in the loop's
    /// `sendfile`.
    pub fn is_small(&self, len: u64) -> bool {
        len <= self.max_file_bytes
    }

    /// Whether a file of `len` bytes may be cached at all.
    pub fn admits(&self, len: u64) -> bool {
        self.is_small(len) && len <= self.budget_bytes
    }

    /// The current generation: read it *before* opening a file, pass it to
    /// [`FileCache::insert`] after reading it.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Caches `content` under `key` unless a clear happened since
    /// `generation` was read or the file is not admitted; evicts least
    /// recently used entries to stay within budget. Returns whether it was cached.
    pub fn insert(&self, key: Vec<u8>, generation: u64, content: CachedFile) -> bool {
        let len = content.bytes.len() as u64;
        if !self.admits(len) {
            return false;
        }
        let mut entries = self.lock();
        // Checked under the lock that `clear` holds while bumping it, so a
        // clear cannot slip in between this check and the insert.
        if generation != self.generation.load(Ordering::SeqCst) {
            return false;
        }
        if let Some(old) = entries.lru.put(key, content) {
            entries.bytes -= old.bytes.len() as u64;
        }
        entries.bytes += len;
        while entries.bytes > self.budget_bytes {
            let Some((_, evicted)) = entries.lru.pop_lru() else { break };
            entries.bytes -= evicted.bytes.len() as u64;
        }
        true
    }

    /// Drops every entry and starts a new generation.
    pub fn clear(&self) -> CacheUsage {
        let mut entries = self.lock();
        self.generation.fetch_add(1, Ordering::SeqCst);
        let cleared = CacheUsage { files: entries.lru.len(), bytes: entries.bytes };
        entries.lru.clear();
        entries.bytes = 0;
        cleared
    }

    /// Files and bytes currently held.
    #[cfg(test)]
    fn usage(&self) -> CacheUsage {
        let entries = self.lock();
        CacheUsage { files: entries.lru.len(), bytes: entries.bytes }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(len: usize) -> CachedFile {
        CachedFile { bytes: vec![7u8; len].into(), modified: None }
    }

    #[test]
    fn never_holds_more_than_its_budget_and_evicts_least_recently_used() {
        let cache = FileCache::new(10_000, 4_000);
        for i in 0..1_000u32 {
            let key = format!("f{i}").into_bytes();
            cache.insert(key, cache.generation(), content(1 + (i as usize * 37) % 3_000));
            assert!(cache.usage().bytes <= 10_000);
        }
        let cache = FileCache::new(300, 300);
        cache.insert(b"a".to_vec(), 0, content(100));
        cache.insert(b"b".to_vec(), 0, content(100));
        cache.insert(b"c".to_vec(), 0, content(100));
        assert!(cache.get(b"a").is_some(), "touch a so b is the oldest");
        cache.insert(b"d".to_vec(), 0, content(100));
        assert!(cache.get(b"b").is_none());
        assert!(cache.get(b"a").is_some() && cache.get(b"c").is_some() && cache.get(b"d").is_some());
        assert_eq!(cache.usage(), CacheUsage { files: 3, bytes: 300 });
    }

    #[test]
    fn files_above_the_cap_and_a_zero_budget_are_never_cached() {
        let cache = FileCache::new(1_000, 10);
        assert!(!cache.insert(b"big".to_vec(), 0, content(11)));
        assert!(cache.insert(b"small".to_vec(), 0, content(10)));
        let off = FileCache::new(0, 10);
        assert!(!off.insert(b"small".to_vec(), 0, content(1)));
        assert!(off.get(b"small").is_none());
        // With the cache off a small file is still read whole (by whatever
        // does the model's reads), only not kept.
        assert!(off.is_small(10) && !off.admits(10) && !off.is_small(11));
    }

    #[test]
    fn replacing_an_entry_keeps_the_byte_count_right() {
        let cache = FileCache::new(1_000, 1_000);
        cache.insert(b"a".to_vec(), 0, content(100));
        cache.insert(b"a".to_vec(), 0, content(40));
        assert_eq!(cache.usage(), CacheUsage { files: 1, bytes: 40 });
    }

    #[test]
    fn a_read_started_before_a_clear_is_not_cached_after_it() {
        let cache = FileCache::new(1_000, 1_000);
        let started_under = cache.generation();
        cache.insert(b"a".to_vec(), started_under, content(5));
        assert_eq!(cache.clear(), CacheUsage { files: 1, bytes: 5 });
        assert!(!cache.insert(b"b".to_vec(), started_under, content(5)));
        assert!(cache.get(b"b").is_none());
        assert!(cache.insert(b"b".to_vec(), cache.generation(), content(5)));
    }
}
