//! The sparse retriever: bge-m3's lexical weights in an in-memory inverted
//! index, scored by dot product. Built from SQLite the first time a sparse
//! search runs in a process, then kept up to date by that process's commits.

use std::collections::HashMap;

#[derive(Default)]
pub(crate) struct SparseIndex {
    postings: HashMap<u32, Vec<(u64, f32)>>,
    tokens_of: HashMap<u64, Vec<u32>>,
}

impl SparseIndex {
    pub fn add(&mut self, key: u64, weights: &[(u32, f32)]) {
        self.remove(key);
        for &(t, w) in weights {
            self.postings.entry(t).or_default().push((key, w));
        }
        self.tokens_of.insert(key, weights.iter().map(|p| p.0).collect());
    }

    pub fn remove(&mut self, key: u64) {
        if let Some(tokens) = self.tokens_of.remove(&key) {
            for t in tokens {
                if let Some(list) = self.postings.get_mut(&t) {
                    list.retain(|p| p.0 != key);
                }
            }
        }
    }

    /// The best keys by dot product with `query`, best first.
    pub fn search(
        &self,
        query: &[(u32, f32)],
        count: usize,
        keep: Option<&dyn Fn(u64) -> bool>,
    ) -> Vec<(u64, f32)> {
        let mut scores: HashMap<u64, f32> = HashMap::new();
        for &(t, qw) in query {
            for &(key, w) in self.postings.get(&t).into_iter().flatten() {
                *scores.entry(key).or_default() += qw * w;
            }
        }
        let mut out: Vec<(u64, f32)> =
            scores.into_iter().filter(|(k, s)| *s > 0.0 && keep.is_none_or(|f| f(*k))).collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        out.truncate(count);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_product_ranking_and_removal() {
        let mut s = SparseIndex::default();
        s.add(1, &[(10, 0.5), (11, 0.1)]);
        s.add(2, &[(10, 0.2), (12, 0.9)]);
        assert_eq!(s.search(&[(10, 1.0)], 5, None), vec![(1, 0.5), (2, 0.2)]);
        assert_eq!(s.search(&[(12, 1.0), (10, 0.1)], 1, None)[0].0, 2);
        s.remove(1);
        assert_eq!(s.search(&[(10, 1.0)], 5, None), vec![(2, 0.2)]);
        s.add(2, &[(11, 1.0)]);
        assert!(s.search(&[(10, 1.0)], 5, None).is_empty());
    }
}
