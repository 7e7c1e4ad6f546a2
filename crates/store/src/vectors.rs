//! The dense vector index: HNSW in usearch, cosine similarity.
//!
//! Vectors are stored at unit length and ranked by inner product, which for
//! unit vectors is their cosine, in one sum instead of three; on CPUs with
//! AVX-512 the inner product is our own kernel ([`crate::distance`]). `i8`
//! storage keeps usearch's cosine, whose quantisation scales each vector to
//! its own range.
//!
//! Derived from SQLite (which keeps every f32 vector in `embeddings`), keyed by
//! `embeddings.key`. The index file and a small state file live in
//! `<data>/vectors/`; the state records the model, dimensions, index settings
//! and the last SQLite change the saved index includes. Saving writes both to
//! temporary files and renames them, index first: a crash between the two
//! renames leaves an index ahead of its state, and replaying changes is
//! idempotent (adds replace, removes of absent keys do nothing).

use crate::StoreError;
use half::slice::HalfFloatSliceExt;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};
use usearch::ffi::{IndexOptions, MetricKind, ScalarKind};

/// How the store's vector index is built; recorded in its state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VectorOptions {
    /// The embedding model's id: vectors of different models never mix.
    pub model: String,
    pub dimensions: usize,
    /// `f16`, `bf16`, `f32` or `i8`.
    pub quantization: String,
    pub connectivity: usize,
    pub expansion_add: usize,
    pub expansion_search: usize,
    /// Below this many vectors, search is exact.
    pub exact_below: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    options: VectorOptions,
    applied_change: i64,
    /// How vectors are stored and compared ([`LAYOUT`]); an index saved
    /// with another layout (0: before it was recorded) is rebuilt from
    /// SQLite when opened.
    #[serde(default)]
    layout: u32,
}

/// 1: unit vectors, inner product (0: raw vectors, cosine).
const LAYOUT: u32 = 1;

pub struct VectorIndex {
    dir: PathBuf,
    options: VectorOptions,
    /// Searches share it; each addition or removal takes it alone, briefly,
    /// and lets searches that wait for it go first (`write_after_searches`),
    /// so adding a big document's vectors holds a search up by about one
    /// addition, not the whole run.
    index: RwLock<usearch::Index>,
    /// Searches waiting for the read lock.
    waiting_searches: AtomicUsize,
    /// usearch answers a search only in one of the per-thread contexts it
    /// was sized for (by default one per core), and fails one that finds
    /// none ("Reserve capacity ahead of searches!"); the service runs many
    /// more searches at once than that. So the index is sized for
    /// [`search_contexts`] of them, and a search beyond waits for a free one.
    free_contexts: Mutex<usize>,
    context_freed: Condvar,
    /// Last change included in the saved files.
    saved_change: std::sync::RwLock<i64>,
    /// Last change included in memory (≥ saved).
    applied_change: std::sync::RwLock<i64>,
}

fn unit_vectors(o: &VectorOptions) -> bool {
    o.quantization != "i8"
}

fn usearch_options(o: &VectorOptions) -> IndexOptions {
    IndexOptions {
        dimensions: o.dimensions,
        metric: if unit_vectors(o) { MetricKind::IP } else { MetricKind::Cos },
        quantization: match o.quantization.as_str() {
            "f32" => ScalarKind::F32,
            "bf16" => ScalarKind::BF16,
            "i8" => ScalarKind::I8,
            _ => ScalarKind::F16,
        },
        connectivity: o.connectivity,
        expansion_add: o.expansion_add,
        expansion_search: o.expansion_search,
        multi: false,
    }
}

/// Searches the index serves at once: the cores, at least 4. More would not
/// run faster on these cores; fewer would queue searches behind each other.
/// Replaces usearch's builtin inner product by ours where the CPU runs it
/// (see [`crate::distance`]); usearch resets the metric when it loads an
/// index, so this follows every load. usearch's distance is `1 - a·b`.
fn use_our_kernels(index: &mut usearch::Index, o: &VectorOptions) {
    use crate::distance::{self, Kernels};
    let kernels = Kernels::detect();
    let d = o.dimensions;
    // SAFETY (each closure): usearch calls the metric with two vectors of
    // the index's scalar kind and `d` dimensions, and `kernels` says the CPU
    // has the instructions.
    match o.quantization.as_str() {
        "f32" if kernels.avx512 => {
            index.change_metric::<f32>(Box::new(move |a, b| 1.0 - unsafe { distance::dot_f32(a, b, d) }))
        }
        "f16" if kernels.avx512 => index.change_metric::<usearch::f16>(Box::new(move |a, b| {
            1.0 - unsafe { distance::dot_f16(a.cast(), b.cast(), d) }
        })),
        "bf16" if kernels.avx512_bf16 => index.change_metric::<usearch::f16>(Box::new(move |a, b| {
            1.0 - unsafe { distance::dot_bf16(a.cast(), b.cast(), d) }
        })),
        _ => {}
    }
}

/// `v` at unit length (a zero vector stays zero).
fn unit(v: &[f32]) -> Cow<'_, [f32]> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm == 0.0 || !norm.is_finite() || (norm - 1.0).abs() < 1e-6 {
        Cow::Borrowed(v)
    } else {
        Cow::Owned(v.iter().map(|x| x / norm).collect())
    }
}

fn search_contexts() -> usize {
    std::thread::available_parallelism().map_or(4, |n| n.get()).max(4)
}

/// Room for `capacity` vectors and [`search_contexts`] searches at once
/// (usearch's plain `reserve` sizes the contexts by the cores).
fn reserve(index: &usearch::Index, capacity: usize) -> Result<(), StoreError> {
    index.reserve_capacity_and_threads(capacity, search_contexts()).map_err(index_error)
}

/// One of the index's search contexts, held for one search.
struct SearchContext<'a>(&'a VectorIndex);

impl Drop for SearchContext<'_> {
    fn drop(&mut self) {
        *self.0.free_contexts.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.0.context_freed.notify_one();
    }
}

fn index_error(e: impl std::fmt::Display) -> StoreError {
    StoreError::Index(format!("vector index: {e}"))
}

impl VectorIndex {
    fn state_path(dir: &Path) -> PathBuf {
        dir.join("state.json")
    }

    fn index_path(dir: &Path) -> PathBuf {
        dir.join("index.usearch")
    }

    /// The options a saved index was built with, if there is one.
    pub fn saved_options(dir: &Path) -> Result<Option<VectorOptions>, StoreError> {
        match std::fs::read(Self::state_path(dir)) {
            Ok(bytes) => Ok(Some(serde_json::from_slice::<State>(&bytes)?.options)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Opens the saved index, or an empty one (applied change 0) when there is
    /// none, it cannot be read, or it was built with other index settings.
    /// Vectors of another model are refused.
    pub fn open(dir: &Path, options: &VectorOptions) -> Result<VectorIndex, StoreError> {
        std::fs::create_dir_all(dir)?;
        let mut applied = 0;
        let mut index = usearch::Index::new(&usearch_options(options)).map_err(index_error)?;
        if let Ok(bytes) = std::fs::read(Self::state_path(dir)) {
            let state: State = serde_json::from_slice(&bytes)?;
            if state.options.model != options.model || state.options.dimensions != options.dimensions {
                return Err(StoreError::ModelMismatch {
                    stored: format!("{} ({} dimensions)", state.options.model, state.options.dimensions),
                    configured: format!("{} ({} dimensions)", options.model, options.dimensions),
                });
            }
            let same_build = state.options.quantization == options.quantization
                && state.options.connectivity == options.connectivity
                && state.layout == LAYOUT;
            let path = Self::index_path(dir);
            if same_build && path.exists() {
                match index.load(&path.to_string_lossy()) {
                    Ok(()) => applied = state.applied_change,
                    Err(e) => {
                        tracing::warn!("vector index unreadable ({e}); rebuilding it from SQLite")
                    }
                }
            }
            index.change_expansion_search(options.expansion_search);
        }
        use_our_kernels(&mut index, options);
        reserve(&index, index.capacity().max(index.size()).max(1024))?;
        Ok(VectorIndex {
            dir: dir.to_path_buf(),
            options: options.clone(),
            index: RwLock::new(index),
            waiting_searches: AtomicUsize::new(0),
            free_contexts: Mutex::new(search_contexts()),
            context_freed: Condvar::new(),
            saved_change: std::sync::RwLock::new(applied),
            applied_change: std::sync::RwLock::new(applied),
        })
    }

    /// A free search context, waiting for one if need be.
    /// `v` as the index compares it: at unit length, except in `i8`
    /// (cosine).
    fn as_stored<'v>(&self, v: &'v [f32]) -> Cow<'v, [f32]> {
        if unit_vectors(&self.options) {
            unit(v)
        } else {
            Cow::Borrowed(v)
        }
    }

    fn search_context(&self) -> SearchContext<'_> {
        let mut free = self.free_contexts.lock().unwrap_or_else(|p| p.into_inner());
        while *free == 0 {
            free = self.context_freed.wait(free).unwrap_or_else(|p| p.into_inner());
        }
        *free -= 1;
        SearchContext(self)
    }

    /// The index for a search.
    fn read(&self) -> RwLockReadGuard<'_, usearch::Index> {
        self.waiting_searches.fetch_add(1, Ordering::AcqRel);
        let guard = self.index.read().unwrap_or_else(|p| p.into_inner());
        self.waiting_searches.fetch_sub(1, Ordering::AcqRel);
        guard
    }

    /// The index for a change, once the searches waiting for it have it
    /// (a lock's writer that takes it back right after letting it go would
    /// keep searches out for a whole run of additions); up to
    /// `SEARCHES_FIRST`, so a stream of searches cannot stop additions.
    fn write_after_searches(&self) -> RwLockWriteGuard<'_, usearch::Index> {
        const SEARCHES_FIRST: Duration = Duration::from_millis(20);
        let started = Instant::now();
        while self.waiting_searches.load(Ordering::Acquire) > 0 && started.elapsed() < SEARCHES_FIRST {
            std::thread::yield_now();
        }
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes HNSW's efSearch (search effort) for later searches.
    pub fn set_expansion_search(&self, ef: usize) {
        self.read().change_expansion_search(ef);
    }

    pub fn options(&self) -> &VectorOptions {
        &self.options
    }

    /// The last change the saved files include.
    pub fn saved_change(&self) -> i64 {
        *self.saved_change.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The last change the index in memory includes.
    pub fn applied_change(&self) -> i64 {
        *self.applied_change.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that the index in memory includes `change`.
    pub fn mark_applied(&self, change: i64) {
        *self.applied_change.write().unwrap_or_else(|p| p.into_inner()) = change;
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn len(&self) -> usize {
        self.read().size()
    }

    /// Adds (or replaces) the vector of `key`.
    pub fn add(&self, key: u64, vector: &[f32]) -> Result<(), StoreError> {
        if vector.len() != self.options.dimensions {
            return Err(StoreError::Invalid(format!(
                "vector has {} dimensions, the index {}",
                vector.len(),
                self.options.dimensions
            )));
        }
        let vector = self.as_stored(vector);
        let index = self.write_after_searches();
        let result = (|| {
            if index.contains(key) {
                index.remove(key).map_err(index_error)?;
            }
            if index.size() + 1 > index.capacity() {
                reserve(&index, (index.capacity() * 2).max(1024))?;
            }
            index.add(key, &vector).map_err(index_error)
        })();
        drop(index);
        result
    }

    /// Makes room for `additional` more vectors at once (one growth instead
    /// of doubling along the way), before a document's vectors are added.
    pub fn reserve_for(&self, additional: usize) -> Result<(), StoreError> {
        let index = self.write_after_searches();
        let needed = index.size() + additional;
        let result = if needed > index.capacity() {
            reserve(&index, needed.max(index.capacity() * 2).max(1024))
        } else {
            Ok(())
        };
        drop(index);
        result
    }

    pub fn remove(&self, key: u64) -> Result<(), StoreError> {
        let index = self.write_after_searches();
        let result =
            if index.contains(key) { index.remove(key).map(drop).map_err(index_error) } else { Ok(()) };
        drop(index);
        result
    }

    pub fn clear(&self) -> Result<(), StoreError> {
        self.write_after_searches().reset().map_err(index_error)
    }

    /// The nearest keys with their cosine similarity, best first. `keep`
    /// filters keys (e.g. by collection).
    pub fn search(
        &self,
        query: &[f32],
        count: usize,
        keep: Option<&dyn Fn(u64) -> bool>,
    ) -> Result<Vec<(u64, f32)>, StoreError> {
        if query.len() != self.options.dimensions {
            return Err(StoreError::Invalid(format!(
                "query vector has {} dimensions, the index {}",
                query.len(),
                self.options.dimensions
            )));
        }
        let query = self.as_stored(query);
        // usearch would convert an f32 query to the stored f16 one scalar at
        // a time (5 % of a search); `half` does it with the CPU's F16C.
        if self.options.quantization == "f16" {
            let mut halves = vec![half::f16::ZERO; query.len()];
            halves.convert_from_f32_slice(&query);
            let bits: Vec<i16> = halves.iter().map(|h| h.to_bits() as i16).collect();
            return self.search_as(usearch::f16::from_i16s(&bits), count, keep);
        }
        self.search_as(&query[..], count, keep)
    }

    fn search_as<T: usearch::VectorType>(
        &self,
        query: &[T],
        count: usize,
        keep: Option<&dyn Fn(u64) -> bool>,
    ) -> Result<Vec<(u64, f32)>, StoreError> {
        let _context = self.search_context();
        let index = self.read();
        let size = index.size();
        if size == 0 || count == 0 {
            return Ok(Vec::new());
        }
        let matches = if size < self.options.exact_below {
            // Exact: rank everything, then filter.
            let all = index.exact_search(query, size).map_err(index_error)?;
            let mut out: Vec<(u64, f32)> = all
                .keys
                .into_iter()
                .zip(all.distances)
                .filter(|(k, _)| keep.is_none_or(|f| f(*k)))
                .take(count)
                .collect();
            out.iter_mut().for_each(|(_, d)| *d = 1.0 - *d);
            return Ok(out);
        } else if let Some(f) = keep {
            index.filtered_search(query, count, f).map_err(index_error)?
        } else {
            index.search(query, count).map_err(index_error)?
        };
        Ok(matches.keys.into_iter().zip(matches.distances).map(|(k, d)| (k, 1.0 - d)).collect())
    }

    /// Writes the index and its state (including `applied_change`) durably.
    pub fn save(&self, applied_change: i64) -> Result<(), StoreError> {
        let index = self.read();
        let tmp_index = self.dir.join("index.usearch.tmp");
        index.save(&tmp_index.to_string_lossy()).map_err(index_error)?;
        drop(index);
        std::fs::File::open(&tmp_index)?.sync_all()?;
        let state = State { options: self.options.clone(), applied_change, layout: LAYOUT };
        let tmp_state = self.dir.join("state.json.tmp");
        std::fs::write(&tmp_state, serde_json::to_vec_pretty(&state)?)?;
        std::fs::File::open(&tmp_state)?.sync_all()?;
        std::fs::rename(&tmp_index, Self::index_path(&self.dir))?;
        std::fs::rename(&tmp_state, Self::state_path(&self.dir))?;
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        *self.saved_change.write().unwrap_or_else(|p| p.into_inner()) = applied_change;
        self.mark_applied(applied_change);
        Ok(())
    }
}

/// Little-endian f32s.
pub fn encode_dense(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn decode_dense(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// (u32 token id, f32 weight) pairs, little-endian.
pub fn encode_sparse(v: &[(u32, f32)]) -> Vec<u8> {
    v.iter().flat_map(|(t, w)| t.to_le_bytes().into_iter().chain(w.to_le_bytes())).collect()
}

pub fn decode_sparse(b: &[u8]) -> Vec<(u32, f32)> {
    b.chunks_exact(8)
        .map(|c| (u32::from_le_bytes([c[0], c[1], c[2], c[3]]), f32::from_le_bytes([c[4], c[5], c[6], c[7]])))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> VectorOptions {
        VectorOptions {
            model: "m".into(),
            dimensions: 4,
            quantization: "f16".into(),
            connectivity: 16,
            expansion_add: 64,
            expansion_search: 32,
            exact_below: 2,
        }
    }

    #[test]
    fn add_search_save_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let index = VectorIndex::open(dir.path(), &options()).unwrap();
        index.add(1, &[1.0, 0.0, 0.0, 0.0]).unwrap();
        index.add(2, &[0.0, 1.0, 0.0, 0.0]).unwrap();
        index.add(3, &[0.7, 0.7, 0.0, 0.0]).unwrap();
        index.add(3, &[0.0, 0.0, 1.0, 0.0]).unwrap(); // replaces
        let hits = index.search(&[0.9, 0.1, 0.0, 0.0], 2, None).unwrap();
        assert_eq!(hits[0].0, 1);
        assert!(hits[0].1 > 0.9);
        let keep = |k: u64| k != 1;
        assert_eq!(index.search(&[0.9, 0.3, 0.0, 0.0], 1, Some(&keep)).unwrap()[0].0, 2);
        index.save(7).unwrap();
        let again = VectorIndex::open(dir.path(), &options()).unwrap();
        assert_eq!(again.applied_change(), 7);
        assert_eq!(again.len(), 3);
        let mut other = options();
        other.model = "other".into();
        assert!(matches!(VectorIndex::open(dir.path(), &other), Err(StoreError::ModelMismatch { .. })));
        let mut i8 = options();
        i8.quantization = "i8".into();
        assert_eq!(VectorIndex::open(dir.path(), &i8).unwrap().applied_change(), 0);
    }

    /// Vectors of any length are ranked and scored by cosine similarity in
    /// every storage kind, by the graph and by the exact search, before and
    /// after a reopen (unit vectors and inner product since layout 1).
    #[test]
    fn every_quantization_scores_cosine_of_unnormalised_vectors() {
        let d = 40;
        let vector = |i: u64| -> Vec<f32> {
            (0..d).map(|j| ((i * 37 + j * 11) % 23) as f32 - 11.0 + (i % 5) as f32 * 3.0).collect()
        };
        let cosine = |a: &[f32], b: &[f32]| {
            let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
            let n = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
            dot / (n(a) * n(b))
        };
        let query: Vec<f32> = vector(7).iter().enumerate().map(|(j, x)| 5.0 * x + j as f32 * 0.1).collect();
        for (quantization, tolerance) in [("f32", 1e-5), ("f16", 2e-3), ("bf16", 2e-2), ("i8", 5e-2)] {
            for exact_below in [0, 1000] {
                let dir = tempfile::tempdir().unwrap();
                let o = VectorOptions {
                    dimensions: d as usize,
                    quantization: quantization.into(),
                    exact_below,
                    ..options()
                };
                let index = VectorIndex::open(dir.path(), &o).unwrap();
                for i in 0..300 {
                    index.add(i, &vector(i)).unwrap();
                }
                index.save(1).unwrap();
                for index in [index, VectorIndex::open(dir.path(), &o).unwrap()] {
                    let hits = index.search(&query, 5, None).unwrap();
                    assert_eq!(hits.len(), 5, "{quantization}");
                    assert!(hits.iter().any(|(k, _)| *k == 7), "{quantization}: {hits:?}");
                    for (k, score) in &hits {
                        let want = cosine(&query, &vector(*k));
                        assert!(
                            (score - want).abs() < tolerance,
                            "{quantization} exact_below={exact_below}: key {k} scored {score}, cosine {want}"
                        );
                    }
                }
            }
        }
    }

    /// An index saved before vectors were stored at unit length (a state
    /// file without `layout`) is not loaded: it is rebuilt from SQLite.
    #[test]
    fn an_index_of_the_old_layout_is_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let index = VectorIndex::open(dir.path(), &options()).unwrap();
        index.add(1, &[3.0, 0.0, 0.0, 0.0]).unwrap();
        index.save(5).unwrap();
        assert_eq!(VectorIndex::open(dir.path(), &options()).unwrap().applied_change(), 5);
        let path = VectorIndex::state_path(dir.path());
        let mut state: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(state["layout"], LAYOUT);
        state.as_object_mut().unwrap().remove("layout");
        std::fs::write(&path, serde_json::to_vec(&state).unwrap()).unwrap();
        let reopened = VectorIndex::open(dir.path(), &options()).unwrap();
        assert_eq!(reopened.applied_change(), 0);
        assert_eq!(reopened.len(), 0);
    }

    /// Many more searches at once than the machine has cores (the service
    /// runs each on its own blocking thread): every one is answered. usearch
    /// keeps one search context per thread it was sized for (by default the
    /// cores), and a search finding none failed with "Reserve capacity ahead
    /// of searches!", seen once in 12,066 requests of the soak test on 2 cores.
    #[test]
    fn more_concurrent_searches_than_cores_all_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = options();
        o.dimensions = 16;
        let index = VectorIndex::open(dir.path(), &o).unwrap();
        let vector = |i: u64| (0..16).map(|d| ((i * 31 + d * 7) % 17) as f32 - 8.0).collect::<Vec<f32>>();
        for i in 0..2000 {
            index.add(i, &vector(i)).unwrap();
        }
        let threads = 4 * std::thread::available_parallelism().map_or(2, |n| n.get()).max(8);
        let failures = std::sync::atomic::AtomicUsize::new(0);
        let start = std::sync::Barrier::new(threads);
        std::thread::scope(|scope| {
            for t in 0..threads {
                let (index, failures, start) = (&index, &failures, &start);
                scope.spawn(move || {
                    start.wait();
                    for i in 0..200u64 {
                        let keep = |k: u64| !k.is_multiple_of(3);
                        let result = if i.is_multiple_of(2) {
                            index.search(&vector(t as u64 * 200 + i), 10, None)
                        } else {
                            index.search(&vector(i), 10, Some(&keep))
                        };
                        match result {
                            Ok(hits) => assert_eq!(hits.len(), 10),
                            Err(e) => {
                                failures.fetch_add(1, Ordering::Relaxed);
                                eprintln!("{e}");
                            }
                        }
                    }
                });
            }
        });
        assert_eq!(failures.into_inner(), 0, "searches failed; see the messages above");
        // Emptied and filled again, it still answers.
        index.clear().unwrap();
        assert!(index.search(&vector(1), 10, None).unwrap().is_empty());
        index.add(5, &vector(5)).unwrap();
        assert_eq!(index.search(&vector(5), 1, None).unwrap()[0].0, 5);
    }

    /// The graph search (vendor/usearch's patched one: neighbours'
    /// vectors prefetched, no key filter while nothing was removed) finds
    /// what the exact search finds, and never answers a removed key: before
    /// a reopen, after it, and after new vectors took the removed ones' slots.
    #[test]
    fn the_graph_search_finds_the_exact_neighbours_and_never_a_removed_key() {
        let d = 24;
        let vector = |i: u64| -> Vec<f32> {
            let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            (0..d)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x % 2001) as f32 / 1000.0 - 1.0
                })
                .collect()
        };
        for quantization in ["f16", "bf16", "f32"] {
            let dir = tempfile::tempdir().unwrap();
            let o = VectorOptions {
                dimensions: d,
                quantization: quantization.into(),
                exact_below: 0,
                ..options()
            };
            let index = VectorIndex::open(dir.path(), &o).unwrap();
            for i in 0..3000 {
                index.add(i, &vector(i)).unwrap();
            }
            // Recall@10 of the graph against the exact ranking.
            let (mut found, queries) = (0, 100);
            for q in 0..queries {
                let query = vector(10_000 + q);
                let graph = index.search(&query, 10, None).unwrap();
                let exact = index.read().exact_search(&query[..], 10).unwrap().keys;
                found += graph.iter().filter(|(k, _)| exact.contains(k)).count();
            }
            let recall = found as f64 / (10 * queries) as f64;
            assert!(recall >= 0.9, "{quantization}: recall@10 {recall}");

            let removed = |k: u64| k.is_multiple_of(3) && k < 3000;
            // usearch marks a removed member with a reserved key and keeps it
            // in the graph: a search that did not filter would answer that key.
            let live = |k: u64| (k < 3000 && !removed(k)) || (5000..5500).contains(&k);
            for k in (0..3000).filter(|k| removed(*k)) {
                index.remove(k).unwrap();
            }
            let check = |index: &VectorIndex, stage: &str| {
                for q in (0..3000).step_by(7) {
                    let hits = index.search(&vector(q), 10, None).unwrap();
                    assert_eq!(hits.len(), 10, "{quantization} {stage}");
                    assert!(hits.iter().all(|(k, _)| live(*k)), "{quantization} {stage}: {hits:?}");
                    if !removed(q) {
                        assert_eq!(hits[0].0, q, "{quantization} {stage}");
                    }
                }
            };
            check(&index, "after removing");
            index.save(1).unwrap();
            let index = VectorIndex::open(dir.path(), &o).unwrap();
            check(&index, "after a reopen");
            for k in 5000..5500 {
                index.add(k, &vector(k)).unwrap();
            }
            check(&index, "after reusing the slots");
            for k in (5000..5500).step_by(11) {
                assert_eq!(index.search(&vector(k), 1, None).unwrap()[0].0, k, "{quantization}");
            }
        }
    }

    #[test]
    fn blobs_round_trip() {
        let v = vec![0.5f32, -1.25, 3.0];
        assert_eq!(decode_dense(&encode_dense(&v)), v);
        let s = vec![(3u32, 0.25f32), (70000, 1.5)];
        assert_eq!(decode_sparse(&encode_sparse(&s)), s);
    }
}
