//! Retrieval metrics as pure functions over one query's ranked results.
//!
//! A ranking is described by `matches`: for each result, best first, the
//! golden units it matches (indices into the query's list of golden units; a
//! unit is a golden chunk or a relevant document). A unit found again lower
//! in the ranking counts only once, so a document split into several chunks
//! is not rewarded several times.

use std::collections::HashSet;

/// Share of the golden units found in the first `k` results (0 with no golden
/// units). This is the contextual-retrieval cookbook's "Pass@k" and, over
/// documents, the usual Recall@k.
pub fn pass_at(matches: &[Vec<usize>], golden: usize, k: usize) -> f64 {
    if golden == 0 {
        return 0.0;
    }
    let found: HashSet<usize> = matches.iter().take(k).flatten().copied().filter(|&u| u < golden).collect();
    found.len() as f64 / golden as f64
}

/// Reciprocal rank of the first result that matches a golden unit, if it is
/// within the first `k`; else 0.
pub fn reciprocal_rank_at(matches: &[Vec<usize>], k: usize) -> f64 {
    matches.iter().take(k).position(|m| !m.is_empty()).map_or(0.0, |i| 1.0 / (i as f64 + 1.0))
}

/// Normalised discounted cumulative gain at `k`, with graded (linear) gains:
/// a result's gain is the highest grade among the golden units it finds first,
/// discounted by log2(rank + 1); the ideal ranking puts the units in
/// decreasing grade. `grades[u]` is unit `u`'s grade (> 0).
pub fn ndcg_at(matches: &[Vec<usize>], grades: &[f64], k: usize) -> f64 {
    let mut ideal: Vec<f64> = grades.iter().copied().filter(|g| *g > 0.0).collect();
    ideal.sort_by(|a, b| b.total_cmp(a));
    let idcg: f64 = ideal.iter().take(k).enumerate().map(|(i, g)| g / discount(i)).sum();
    if idcg <= 0.0 {
        return 0.0;
    }
    let mut seen = HashSet::new();
    let mut dcg = 0.0;
    for (i, m) in matches.iter().take(k).enumerate() {
        let gain =
            m.iter().filter(|&&u| u < grades.len() && seen.insert(u)).map(|&u| grades[u]).fold(0.0, f64::max);
        dcg += gain / discount(i);
    }
    (dcg / idcg).min(1.0)
}

/// log2(rank + 1) for a 0-based position.
fn discount(position: usize) -> f64 {
    (position as f64 + 2.0).log2()
}

/// The `p`th percentile (0–100) by the nearest-rank method: the smallest value
/// with at least p% of the values at or below it. None for no values.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// The mean, or 0 for no values.
pub fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        0.0
    } else {
        values.iter().sum::<f64>() / values.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    /// Results: r1 misses, r2 finds unit 1, r3 finds unit 0, r4 finds unit 1 again.
    fn ranking() -> Vec<Vec<usize>> {
        vec![vec![], vec![1], vec![0], vec![1]]
    }

    #[test]
    fn pass_counts_each_golden_unit_once() {
        let m = ranking();
        assert!(close(pass_at(&m, 2, 1), 0.0));
        assert!(close(pass_at(&m, 2, 2), 0.5));
        assert!(close(pass_at(&m, 2, 3), 1.0));
        assert!(close(pass_at(&m, 2, 20), 1.0));
        // Three golden units, two found.
        assert!(close(pass_at(&m, 3, 20), 2.0 / 3.0));
        assert!(close(pass_at(&m, 0, 20), 0.0));
        // One result covering two golden units.
        assert!(close(pass_at(&[vec![0, 1]], 2, 1), 1.0));
    }

    #[test]
    fn reciprocal_rank_is_of_the_first_match_within_k() {
        let m = ranking();
        assert!(close(reciprocal_rank_at(&m, 10), 0.5));
        assert!(close(reciprocal_rank_at(&m, 1), 0.0));
        assert!(close(reciprocal_rank_at(&[vec![0]], 10), 1.0));
        assert!(close(reciprocal_rank_at(&[], 10), 0.0));
        let late: Vec<Vec<usize>> = (0..12).map(|i| if i == 10 { vec![0] } else { vec![] }).collect();
        assert!(close(reciprocal_rank_at(&late, 10), 0.0));
        assert!(close(reciprocal_rank_at(&late, 11), 1.0 / 11.0));
    }

    #[test]
    fn ndcg_with_binary_gains() {
        // Units 0 and 1, grade 1 each, found at ranks 2 and 3:
        // DCG = 1/log2(3) + 1/log2(4) = 0.63093 + 0.5; IDCG = 1 + 0.63093.
        let m = ranking();
        let expected = (1.0 / 3f64.log2() + 0.5) / (1.0 + 1.0 / 3f64.log2());
        assert!(close(ndcg_at(&m, &[1.0, 1.0], 10), expected), "{}", ndcg_at(&m, &[1.0, 1.0], 10));
        // Perfect ranking.
        assert!(close(ndcg_at(&[vec![0], vec![1]], &[1.0, 1.0], 10), 1.0));
        // Nothing found, or nothing to find.
        assert!(close(ndcg_at(&[vec![], vec![]], &[1.0], 10), 0.0));
        assert!(close(ndcg_at(&m, &[], 10), 0.0));
    }

    #[test]
    fn ndcg_with_graded_gains() {
        // Grades 3 (unit 0) and 1 (unit 1); ranking finds unit 1 at rank 1, unit 0 at rank 2.
        // DCG = 1/1 + 3/log2(3) = 1 + 1.89279 = 2.89279; IDCG = 3/1 + 1/log2(3) = 3.63093.
        let m = vec![vec![1], vec![0]];
        let got = ndcg_at(&m, &[3.0, 1.0], 10);
        assert!(close(got, (1.0 + 3.0 / 3f64.log2()) / (3.0 + 1.0 / 3f64.log2())), "{got}");
        assert!((got - 0.79670).abs() < 1e-4, "{got}");
        // Cut at k = 1: DCG = 1, IDCG = 3.
        assert!(close(ndcg_at(&m, &[3.0, 1.0], 1), 1.0 / 3.0));
        // A repeat of an already-found unit gains nothing.
        let repeat = vec![vec![0], vec![0], vec![1]];
        let expected = (3.0 + 1.0 / 4f64.log2()) / (3.0 + 1.0 / 3f64.log2());
        assert!(close(ndcg_at(&repeat, &[3.0, 1.0], 10), expected));
        // One result covering two units takes the higher grade, never above 1.
        assert!(ndcg_at(&[vec![0, 1]], &[3.0, 1.0], 10) <= 1.0);
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(10.0));
        assert_eq!(percentile(&v, 95.0), Some(19.0));
        assert_eq!(percentile(&v, 100.0), Some(20.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        // Order does not matter; a single value is every percentile.
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 50.0), Some(2.0));
        assert_eq!(percentile(&[7.5], 95.0), Some(7.5));
        assert_eq!(percentile(&[], 50.0), None);
        // Four values: p50 is the 2nd, p95 the 4th.
        assert_eq!(percentile(&[4.0, 1.0, 3.0, 2.0], 50.0), Some(2.0));
        assert_eq!(percentile(&[4.0, 1.0, 3.0, 2.0], 95.0), Some(4.0));
        assert!(close(mean(&[1.0, 2.0, 6.0]), 3.0));
        assert!(close(mean(&[]), 0.0));
    }
}
