//! CPU kernels the encoder uses beside candle's, for f32 tensors on the CPU:
//!
//! - [`Int8Linear`]: a linear layer whose weights are quantised to int8 per
//!   output channel at load time and whose inputs are quantised to u8 per
//!   row at run time (asymmetric: min to max); the products are summed
//!   exactly in i32 (AMX-INT8 tiles on Intel Xeon from Sapphire Rapids on,
//!   AVX-512 VNNI on other CPUs that have it, plain Rust otherwise, all with
//!   the same sums; AMX and VNNI share one epilogue, so the same floats) and
//!   scaled back to f32 with the bias, the residual and the activation fused
//!   into the same pass.
//! - [`linear_f32`]: an f32 linear layer as one gemm call that adds the
//!   product onto the bias and residual already in the output (no zeroed
//!   buffer, no separate bias pass), the GELU after it in place.
//! - [`attention`]: self-attention per sequence, in register tiles of four
//!   queries (scores against transposed keys, softmax, context), every
//!   head's keys and values gathered in one pass.
//! - [`masked_softmax`]: the attention mask added and the softmax taken in one
//!   pass over the scores (the generic path for other head sizes).
//! - [`gelu_erf`]: the exact GELU on a branch-free erf (explicit AVX-512 with
//!   fused multiply-adds where the CPU has it; the compiler vectorises the
//!   portable form elsewhere).
//!
//! Everything here works on plain slices; [`f32_slice`] and [`f32_tensor`]
//! move between them and candle tensors without copying.

use candle_core::{CpuStorage, Device, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

/// Rows of the input one parallel task handles: its quantised rows (64 ×
/// in-features bytes) stay in L2 while every weight tile passes over them.
const ROWS_PER_TASK: usize = 64;

/// Runs `f` on the data of a contiguous f32 CPU tensor.
pub(crate) fn f32_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("kernel input is not contiguous");
    };
    match &*storage {
        Storage::Cpu(CpuStorage::F32(data)) => Ok(f(&data[start..end])),
        _ => candle_core::bail!("kernel input is not an f32 CPU tensor"),
    }
}

/// Wraps `data` as a CPU tensor of `shape` (no copy).
pub(crate) fn f32_tensor<S: Into<Shape>>(data: Vec<f32>, shape: S) -> Result<Tensor> {
    Tensor::from_vec(data, shape, &Device::Cpu)
}

/// What a linear layer's epilogue does after the bias (and the residual,
/// when given), on rows `[.., n]` in place.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Epilogue<'a> {
    /// Nothing more.
    None,
    /// The exact GELU.
    GeluErf,
    /// Layer norm over each row: `(y - mean) / √(var + eps) · gamma + beta`.
    LayerNorm { gamma: &'a [f32], beta: &'a [f32], eps: f32 },
}

impl Epilogue<'_> {
    /// Runs the epilogue on whole rows of `n` values.
    pub(crate) fn apply(&self, rows: &mut [f32], n: usize) {
        match *self {
            Epilogue::None => {}
            Epilogue::GeluErf => gelu_erf(rows),
            Epilogue::LayerNorm { gamma, beta, eps } => {
                assert!(gamma.len() == n && beta.len() == n, "layer norm parameters are not [n]");
                layer_norm_rows(rows, n, gamma, beta, eps)
            }
        }
    }
}

/// Runs `$body` (an expression over the given slices) compiled for AVX-512F
/// when the CPU has it (and [`avx512_enabled`]), so that its loops vectorise
/// 16 wide, else for AVX2 and FMA (8 wide) where the CPU has them, else as
/// plain code. The tiers compute the same values: Rust never fuses a
/// multiply and an add on its own, and the partial sums keep their order.
macro_rules! multiversion {
    ($name:ident ( $($arg:ident : $ty:ty),* ) $body:block) => {
        fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn avx512($($arg: $ty),*) {
                    body($($arg),*)
                }
                if avx512_enabled() {
                    // SAFETY: the CPU has AVX-512F, checked just above;
                    // `avx512` only compiles the same safe body for it.
                    unsafe { avx512($($arg),*) };
                    return;
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) {
                    body($($arg),*)
                }
                if avx2_available() {
                    // SAFETY: the CPU has AVX2 and FMA, checked just above;
                    // `avx2` only compiles the same safe body for them.
                    unsafe { avx2($($arg),*) };
                    return;
                }
            }
            body($($arg),*)
        }
    };
}

multiversion!(layer_norm_rows(rows: &mut [f32], n: usize, gamma: &[f32], beta: &[f32], eps: f32) {
    // Two passes (mean, then squared deviations) in 16 partial sums each:
    // vectorised, and no cancellation as in E[x²] - E[x]².
    for row in rows.chunks_exact_mut(n) {
        let mut acc = [0f32; 16];
        let mut chunks = row.chunks_exact(16);
        for c in &mut chunks {
            for j in 0..16 {
                acc[j] += c[j];
            }
        }
        let mean = (acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()) / n as f32;
        let mut acc = [0f32; 16];
        let mut chunks = row.chunks_exact(16);
        for c in &mut chunks {
            for j in 0..16 {
                acc[j] += (c[j] - mean) * (c[j] - mean);
            }
        }
        let tail: f32 = chunks.remainder().iter().map(|x| (x - mean) * (x - mean)).sum();
        let var = (acc.iter().sum::<f32>() + tail) / n as f32;
        let rstd = 1.0 / (var + eps).sqrt();
        for ((x, g), b) in row.iter_mut().zip(gamma).zip(beta) {
            *x = (*x - mean) * rstd * g + b;
        }
    }
});

/// Softmax over the last dimension of `scores` (`[b, heads, l, len]`), with
/// the additive mask `bias` (`[b, len]`) added first; in place.
pub(crate) fn masked_softmax(scores: &mut [f32], bias: &[f32], heads: usize, l: usize, len: usize) {
    assert_eq!(scores.len() % (heads * l * len), 0);
    assert_eq!(bias.len() * heads * l, scores.len());
    scores.par_chunks_mut(len * l).enumerate().for_each(|(i, rows)| {
        let b = i / heads;
        softmax_rows(rows, &bias[b * len..(b + 1) * len]);
    });
}

multiversion!(softmax_rows(rows: &mut [f32], mask: &[f32]) {
    let len = mask.len();
    for row in rows.chunks_exact_mut(len) {
        let mut max = [f32::NEG_INFINITY; 16];
        let mut chunks = row.chunks_exact_mut(16);
        let mut mask_chunks = mask.chunks_exact(16);
        for (c, m) in (&mut chunks).zip(&mut mask_chunks) {
            for j in 0..16 {
                c[j] += m[j];
                max[j] = max[j].max(c[j]);
            }
        }
        let mut max = max.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        for (x, m) in chunks.into_remainder().iter_mut().zip(mask_chunks.remainder()) {
            *x += m;
            max = max.max(*x);
        }
        let mut sums = [0f32; 16];
        let mut chunks = row.chunks_exact_mut(16);
        for c in &mut chunks {
            for j in 0..16 {
                c[j] = exp(c[j] - max);
                sums[j] += c[j];
            }
        }
        let mut sum: f32 = sums.iter().sum();
        for x in chunks.into_remainder() {
            *x = exp(*x - max);
            sum += *x;
        }
        let inv = 1.0 / sum;
        for x in row.iter_mut() {
            *x *= inv;
        }
    }
});

/// Self-attention for one batch: `qkv` is `[b, len, 3 * heads * D]` (per
/// token the queries, already scaled by `1/√D`, then keys, then values, head
/// after head), `mask` the additive mask `[b, len]`; returns the context
/// `[b, len, heads * D]`. Each sequence is one parallel task whose keys,
/// values and scores stay in L1/L2, instead of candle's whole-batch
/// `[b, heads, len, len]` scores going to memory three times.
pub(crate) fn attention<const D: usize>(
    qkv: &[f32],
    mask: &[f32],
    b: usize,
    len: usize,
    heads: usize,
) -> Vec<f32> {
    let h = heads * D;
    assert_eq!(qkv.len(), b * len * 3 * h);
    assert_eq!(mask.len(), b * len);
    let mut out = vec![0f32; b * len * h];
    out.par_chunks_mut(len * h).enumerate().for_each(|(i, out)| {
        attention_sequence::<D>(
            &qkv[i * len * 3 * h..(i + 1) * len * 3 * h],
            &mask[i * len..(i + 1) * len],
            heads,
            out,
        );
    });
    out
}

fn attention_sequence<const D: usize>(qkv: &[f32], mask: &[f32], heads: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx512_enabled() {
        // SAFETY: the CPU has AVX-512F, checked just above; the function
        // only compiles the same safe body for it.
        unsafe { attention_sequence_avx512::<D>(qkv, mask, heads, out) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if avx2_available() {
        // SAFETY: the CPU has AVX2 and FMA, checked just above; the
        // function only compiles the same safe body for them.
        unsafe { attention_sequence_avx2::<D>(qkv, mask, heads, out) };
        return;
    }
    attention_sequence_body::<D>(qkv, mask, heads, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn attention_sequence_avx2<const D: usize>(qkv: &[f32], mask: &[f32], heads: usize, out: &mut [f32]) {
    attention_sequence_body::<D>(qkv, mask, heads, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn attention_sequence_avx512<const D: usize>(qkv: &[f32], mask: &[f32], heads: usize, out: &mut [f32]) {
    attention_sequence_body::<D>(qkv, mask, heads, out)
}

/// Query rows per tile of [`attention_sequence_body`]: each key (scores)
/// and each value row (context) loaded from L1 serves this many queries.
const QUERY_TILE: usize = 4;

#[inline(always)]
fn attention_sequence_body<const D: usize>(qkv: &[f32], mask: &[f32], heads: usize, out: &mut [f32]) {
    let len = mask.len();
    let h = heads * D;
    // Every head's keys transposed, `[heads][D][lp]`, and values, `[heads]
    // [len][D]`, gathered in one pass over the tokens (a pass per head
    // would fetch each token's row again for every head); keys and mask are
    // padded to whole blocks of 16 keys, padding keys 0 and masked out.
    let lp = len.div_ceil(16) * 16;
    let mut kt = vec![0f32; heads * D * lp];
    let mut v = vec![0f32; heads * len * D];
    for (j, token) in qkv.chunks_exact(3 * h).enumerate() {
        for (kt, key) in kt.chunks_exact_mut(D * lp).zip(token[h..2 * h].chunks_exact(D)) {
            for (d, k) in key.iter().enumerate() {
                kt[d * lp + j] = *k;
            }
        }
        for (head, value) in token[2 * h..].chunks_exact(D).enumerate() {
            v[(head * len + j) * D..(head * len + j + 1) * D].copy_from_slice(value);
        }
    }
    let mut m = vec![f32::MIN; lp];
    m[..len].copy_from_slice(mask);
    let mut scores = vec![0f32; QUERY_TILE * lp];
    let mut inv = [0f32; QUERY_TILE];
    for head in 0..heads {
        let kt = &kt[head * D * lp..(head + 1) * D * lp];
        let v = &v[head * len * D..(head + 1) * len * D];
        let mut t = 0;
        while t < len {
            let rows = QUERY_TILE.min(len - t);
            // The tile's queries: row r starts at q[r * 3h].
            let q = &qkv[t * 3 * h + head * D..(t + rows - 1) * 3 * h + (head + 1) * D];
            let tile = &mut scores[..rows * lp];
            for row in tile.chunks_exact_mut(lp) {
                row.copy_from_slice(&m);
            }
            if !avx512::scores::<D>(q, 3 * h, kt, tile) && !avx2::scores::<D>(q, 3 * h, kt, tile) {
                for (r, row) in tile.chunks_exact_mut(lp).enumerate() {
                    for (d, &qd) in q[r * 3 * h..r * 3 * h + D].iter().enumerate() {
                        for (s, k) in row.iter_mut().zip(&kt[d * lp..(d + 1) * lp]) {
                            *s += qd * k;
                        }
                    }
                }
            }
            // Softmax (padding keys give exp(MIN - max) ≈ 0), unnormalised:
            // the context is scaled by 1/sum instead.
            for (row, inv) in tile.chunks_exact_mut(lp).zip(&mut inv) {
                if let Some(i) = avx512::softmax_unnormalised(row).or_else(|| avx2::softmax_unnormalised(row))
                {
                    *inv = i;
                    continue;
                }
                let mut max = [f32::NEG_INFINITY; 16];
                for c in row.chunks_exact(16) {
                    for x in 0..16 {
                        max[x] = max[x].max(c[x]);
                    }
                }
                let max = max.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                let mut sums = [0f32; 16];
                for c in row.chunks_exact_mut(16) {
                    for x in 0..16 {
                        c[x] = exp(c[x] - max);
                        sums[x] += c[x];
                    }
                }
                *inv = 1.0 / sums.iter().sum::<f32>();
            }
            let o = &mut out[t * h + head * D..(t + rows - 1) * h + (head + 1) * D];
            if !avx512::context::<D>(tile, lp, len, v, o, h) && !avx2::context::<D>(tile, lp, len, v, o, h) {
                for (r, p) in tile.chunks_exact(lp).enumerate() {
                    // Summed in a local array of D lanes, which the compiler
                    // keeps in vector registers (summed into `o` in place,
                    // it turned the loops around into scalar sums).
                    let mut acc = [0f32; D];
                    for (&pj, vj) in p.iter().zip(v.chunks_exact(D)) {
                        for (a, v) in acc.iter_mut().zip(vj) {
                            *a += pj * v;
                        }
                    }
                    o[r * h..r * h + D].copy_from_slice(&acc);
                }
            }
            for (r, inv) in inv.iter().enumerate().take(rows) {
                for o in &mut o[r * h..r * h + D] {
                    *o *= inv;
                }
            }
            t += rows;
        }
    }
}

/// The shapes the score tiles take: `kt` `[D][lp]` with `lp` a non-zero
/// multiple of 16, `s` `[rows][lp]` with 1 to [`QUERY_TILE`] rows, and `q`
/// those rows `qs` apart; `(lp, rows)` where they fit.
#[cfg(target_arch = "x86_64")]
fn scores_fit<const D: usize>(q: &[f32], qs: usize, kt: &[f32], s: &[f32]) -> Option<(usize, usize)> {
    let lp = kt.len() / D;
    let rows = s.len() / lp.max(1);
    (lp > 0
        && lp.is_multiple_of(16)
        && kt.len() == D * lp
        && s.len() == rows * lp
        && (1..=QUERY_TILE).contains(&rows)
        && q.len() == (rows - 1) * qs + D)
        .then_some((lp, rows))
}

/// The shapes the context tiles take: `p` `[rows][lp]` with 1 to
/// [`QUERY_TILE`] rows and `len ≤ lp`, `v` at least `[len][D]`, `o` the rows
/// `os` apart (D > 0; each tier adds its own bounds on D); `rows` where they fit.
#[cfg(target_arch = "x86_64")]
fn context_fits<const D: usize>(
    p: &[f32],
    lp: usize,
    len: usize,
    v: &[f32],
    o: &[f32],
    os: usize,
) -> Option<usize> {
    let rows = p.len() / lp.max(1);
    (D > 0
        && len <= lp
        && p.len() == rows * lp
        && (1..=QUERY_TILE).contains(&rows)
        && v.len() >= len * D
        && o.len() == (rows - 1) * os + D)
        .then_some(rows)
}

/// Explicit AVX-512 tiles of [`attention_sequence_body`] (the compiler left
/// the loops scalar, then untiled); each returns false, doing nothing, where
/// the CPU lacks AVX-512F or the shapes do not fit. A tile is up to
/// [`QUERY_TILE`] query rows; full tiles keep 16 accumulators in registers.
mod avx512 {
    /// For each query row r of the tile, `s[r][j] += Σ_d q[r][d] · kt[d][j]`:
    /// `q` holds the rows `qs` apart (D values each), `kt` is `[D][lp]` and
    /// `s` is `[rows][lp]`, `lp` a multiple of 16.
    #[inline(always)]
    pub(super) fn scores<const D: usize>(q: &[f32], qs: usize, kt: &[f32], s: &mut [f32]) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            if let Some((lp, rows)) = super::scores_fit::<D>(q, qs, kt, s).filter(|_| super::avx512_enabled())
            {
                // SAFETY: AVX-512F is present (checked) and the shapes are as
                // the tile functions require (checked).
                unsafe {
                    if rows == super::QUERY_TILE {
                        scores_tile::<D, { super::QUERY_TILE }>(
                            q.as_ptr(),
                            qs,
                            kt.as_ptr(),
                            lp,
                            s.as_mut_ptr(),
                        );
                    } else {
                        for r in 0..rows {
                            scores_tile::<D, 1>(
                                q.as_ptr().add(r * qs),
                                qs,
                                kt.as_ptr(),
                                lp,
                                s.as_mut_ptr().add(r * lp),
                            );
                        }
                    }
                }
                return true;
            }
        }
        let _ = (q, qs, kt, s);
        false
    }

    /// For each row r of the tile, `o[r] = Σ_{j < len} p[r][j] · v[j]`: `p`
    /// is `[rows][lp]`, `v` `[len][D]`, and `o` holds the rows `os` apart;
    /// D is 16 to 64 in steps of 16.
    #[inline(always)]
    pub(super) fn context<const D: usize>(
        p: &[f32],
        lp: usize,
        len: usize,
        v: &[f32],
        o: &mut [f32],
        os: usize,
    ) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            let fits = super::context_fits::<D>(p, lp, len, v, o, os);
            if let Some(rows) = fits.filter(|_| D.is_multiple_of(16) && D <= 64 && super::avx512_enabled()) {
                // SAFETY: AVX-512F is present (checked) and the shapes are as
                // the tile functions require (checked).
                unsafe {
                    if rows == super::QUERY_TILE {
                        context_tile::<D, { super::QUERY_TILE }>(
                            p.as_ptr(),
                            lp,
                            len,
                            v.as_ptr(),
                            o.as_mut_ptr(),
                            os,
                        );
                    } else {
                        for r in 0..rows {
                            context_tile::<D, 1>(
                                p.as_ptr().add(r * lp),
                                lp,
                                len,
                                v.as_ptr(),
                                o.as_mut_ptr().add(r * os),
                                os,
                            );
                        }
                    }
                }
                return true;
            }
        }
        let _ = (p, lp, len, v, o, os);
        false
    }

    /// `row[j] = exp(row[j] - max(row))`, returning `1 / Σ row` (the
    /// softmax, left unnormalised); `row.len()` a multiple of 16.
    #[inline(always)]
    pub(super) fn softmax_unnormalised(row: &mut [f32]) -> Option<f32> {
        #[cfg(target_arch = "x86_64")]
        if !row.is_empty() && row.len().is_multiple_of(16) && super::avx512_enabled() {
            // SAFETY: AVX-512F is present and the length a multiple of 16
            // (checked).
            return Some(unsafe { softmax_unnormalised_avx512(row) });
        }
        let _ = row;
        None
    }

    /// # Safety
    /// AVX-512F; `row.len()` a non-zero multiple of 16.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn softmax_unnormalised_avx512(row: &mut [f32]) -> f32 {
        use std::arch::x86_64::*;
        let p = row.as_mut_ptr();
        let mut max = _mm512_set1_ps(f32::NEG_INFINITY);
        for i in (0..row.len()).step_by(16) {
            max = _mm512_max_ps(max, _mm512_loadu_ps(p.add(i)));
        }
        let max = _mm512_set1_ps(_mm512_reduce_max_ps(max));
        let mut sum = _mm512_setzero_ps();
        for i in (0..row.len()).step_by(16) {
            let e = exp16(_mm512_sub_ps(_mm512_loadu_ps(p.add(i)), max));
            _mm512_storeu_ps(p.add(i), e);
            sum = _mm512_add_ps(sum, e);
        }
        1.0 / _mm512_reduce_add_ps(sum)
    }

    /// [`super::gelu_erf`] on whole blocks of 16 lanes, [`super::erf`]'s
    /// formula with fused multiply-adds; returns how many leading values it
    /// did (0 without AVX-512F).
    #[inline(always)]
    pub(super) fn gelu_erf(xs: &mut [f32]) -> usize {
        #[cfg(target_arch = "x86_64")]
        if super::avx512_enabled() {
            // SAFETY: AVX-512F is present (checked).
            unsafe { gelu_erf_avx512(xs) };
            return xs.len() / 16 * 16;
        }
        let _ = xs;
        0
    }

    /// # Safety
    /// AVX-512F.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn gelu_erf_avx512(xs: &mut [f32]) {
        use std::arch::x86_64::*;
        for c in xs.chunks_exact_mut(16) {
            let x = _mm512_loadu_ps(c.as_ptr());
            let z = _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::FRAC_1_SQRT_2));
            let a = _mm512_abs_ps(z);
            let t = _mm512_div_ps(
                _mm512_set1_ps(1.0),
                _mm512_fmadd_ps(_mm512_set1_ps(super::ERF_P), a, _mm512_set1_ps(1.0)),
            );
            let mut poly = _mm512_set1_ps(super::ERF_A[4]);
            for c in [super::ERF_A[3], super::ERF_A[2], super::ERF_A[1], super::ERF_A[0]] {
                poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(c));
            }
            poly = _mm512_mul_ps(poly, t);
            // erf(|z|) = 1 - poly · e^(-z²), then z's sign; gelu = x/2 · (1 + erf).
            let e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(a, a)));
            let erf_abs = _mm512_fnmadd_ps(poly, e, _mm512_set1_ps(1.0));
            let sign = _mm512_and_si512(_mm512_castps_si512(z), _mm512_set1_epi32(i32::MIN));
            let erf = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(erf_abs), sign));
            let half_x = _mm512_mul_ps(x, _mm512_set1_ps(0.5));
            _mm512_storeu_ps(c.as_mut_ptr(), _mm512_fmadd_ps(half_x, erf, half_x));
        }
    }

    /// [`super::exp`] on 16 lanes: the same range reduction and polynomial,
    /// with fused multiply-adds, and 2ⁿ applied by `vscalefps`.
    ///
    /// # Safety
    /// AVX-512F.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(super) unsafe fn exp16(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        let x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.0)), _mm512_set1_ps(-87.0));
        // Round to nearest, exceptions suppressed.
        let n = _mm512_roundscale_ps::<0x08>(_mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)));
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(super::LN2_HI), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(super::LN2_LO), r);
        let mut p = _mm512_set1_ps(1.0 / 720.0);
        for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        _mm512_scalef_ps(p, n)
    }

    /// # Safety
    /// AVX-512F; `q` readable at `r * qs + d` and `s` writable at `r * lp +
    /// j` for r < R, d < D, j < lp; `kt` readable at `d * lp + j`; `lp` a
    /// multiple of 16.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn scores_tile<const D: usize, const R: usize>(
        q: *const f32,
        qs: usize,
        kt: *const f32,
        lp: usize,
        s: *mut f32,
    ) {
        use std::arch::x86_64::*;
        let mut jb = 0;
        // Four blocks of 16 keys by R rows: 4R independent FMA chains, and
        // each key vector loaded once for the R rows.
        while jb + 64 <= lp {
            let mut acc = [[_mm512_setzero_ps(); 4]; R];
            for (r, acc) in acc.iter_mut().enumerate() {
                for (i, acc) in acc.iter_mut().enumerate() {
                    *acc = _mm512_loadu_ps(s.add(r * lp + jb + 16 * i));
                }
            }
            for d in 0..D {
                let k = kt.add(d * lp + jb);
                let kv = [0, 1, 2, 3].map(|i| _mm512_loadu_ps(k.add(16 * i)));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let qv = _mm512_set1_ps(*q.add(r * qs + d));
                    for (acc, kv) in acc.iter_mut().zip(kv) {
                        *acc = _mm512_fmadd_ps(qv, kv, *acc);
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                for (i, acc) in acc.iter().enumerate() {
                    _mm512_storeu_ps(s.add(r * lp + jb + 16 * i), *acc);
                }
            }
            jb += 64;
        }
        while jb < lp {
            let mut acc = [_mm512_setzero_ps(); R];
            for (r, acc) in acc.iter_mut().enumerate() {
                *acc = _mm512_loadu_ps(s.add(r * lp + jb));
            }
            for d in 0..D {
                let kv = _mm512_loadu_ps(kt.add(d * lp + jb));
                for (r, acc) in acc.iter_mut().enumerate() {
                    *acc = _mm512_fmadd_ps(_mm512_set1_ps(*q.add(r * qs + d)), kv, *acc);
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                _mm512_storeu_ps(s.add(r * lp + jb), *acc);
            }
            jb += 16;
        }
    }

    /// # Safety
    /// AVX-512F; D is 16, 32, 48 or 64; `p` readable at `r * lp + j` for r <
    /// R, j < len; `v` readable at `j * D + d`; `o` writable at `r * os + d`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn context_tile<const D: usize, const R: usize>(
        p: *const f32,
        lp: usize,
        len: usize,
        v: *const f32,
        o: *mut f32,
        os: usize,
    ) {
        use std::arch::x86_64::*;
        let nv = D / 16;
        let mut acc = [[_mm512_setzero_ps(); 4]; R];
        for j in 0..len {
            let mut vv = [_mm512_setzero_ps(); 4];
            for (i, vv) in vv.iter_mut().enumerate().take(nv) {
                *vv = _mm512_loadu_ps(v.add(j * D + 16 * i));
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let pv = _mm512_set1_ps(*p.add(r * lp + j));
                for (acc, vv) in acc.iter_mut().zip(vv).take(nv) {
                    *acc = _mm512_fmadd_ps(pv, vv, *acc);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (i, acc) in acc.iter().enumerate().take(nv) {
                _mm512_storeu_ps(o.add(r * os + 16 * i), *acc);
            }
        }
    }
}

/// The tiles of [`avx512`] for CPUs with AVX2 and FMA but no AVX-512 (AMD
/// EPYC before Zen 4, Intel desktops): 8 lanes, with explicit fused
/// multiply-adds (the portable bodies have none: Rust does not fuse on its
/// own), and sized for 16 vector registers. Each returns false (or 0),
/// doing nothing, where the CPU lacks AVX2 or FMA or the shapes do not fit.
mod avx2 {
    /// As [`super::avx512::scores`].
    #[inline(always)]
    pub(super) fn scores<const D: usize>(q: &[f32], qs: usize, kt: &[f32], s: &mut [f32]) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            if let Some((lp, rows)) = super::scores_fit::<D>(q, qs, kt, s).filter(|_| super::avx2_available())
            {
                // SAFETY: AVX2 and FMA are present (checked) and the shapes
                // are as the tile function requires (checked).
                unsafe {
                    if rows == super::QUERY_TILE {
                        scores_tile::<D, { super::QUERY_TILE }>(
                            q.as_ptr(),
                            qs,
                            kt.as_ptr(),
                            lp,
                            s.as_mut_ptr(),
                        );
                    } else {
                        for r in 0..rows {
                            let (q, s) = (q.as_ptr().add(r * qs), s.as_mut_ptr().add(r * lp));
                            scores_tile::<D, 1>(q, qs, kt.as_ptr(), lp, s);
                        }
                    }
                }
                return true;
            }
        }
        let _ = (q, qs, kt, s);
        false
    }

    /// As [`super::avx512::context`]; D a multiple of 8.
    #[inline(always)]
    pub(super) fn context<const D: usize>(
        p: &[f32],
        lp: usize,
        len: usize,
        v: &[f32],
        o: &mut [f32],
        os: usize,
    ) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            let fits = super::context_fits::<D>(p, lp, len, v, o, os);
            if let Some(rows) = fits.filter(|_| D.is_multiple_of(8) && super::avx2_available()) {
                // SAFETY: AVX2 and FMA are present (checked) and the shapes
                // are as the tile function requires (checked): each call
                // reads rows r, r + 1 (or r) of p and writes the same rows
                // of o, columns c..c + 32 at most, within D.
                unsafe {
                    // Columns 32 at a time (4 vectors), then the last 8, 16
                    // or 24.
                    for c in (0..D / 32 * 32).step_by(32) {
                        context_rows::<D, 4>(p, lp, len, v, c, o, os, rows);
                    }
                    let c = D / 32 * 32;
                    match (D - c) / 8 {
                        1 => context_rows::<D, 1>(p, lp, len, v, c, o, os, rows),
                        2 => context_rows::<D, 2>(p, lp, len, v, c, o, os, rows),
                        3 => context_rows::<D, 3>(p, lp, len, v, c, o, os, rows),
                        _ => {}
                    }
                }
                return true;
            }
        }
        let _ = (p, lp, len, v, o, os);
        false
    }

    /// As [`super::avx512::softmax_unnormalised`]; `row.len()` a multiple of 8.
    #[inline(always)]
    pub(super) fn softmax_unnormalised(row: &mut [f32]) -> Option<f32> {
        #[cfg(target_arch = "x86_64")]
        if !row.is_empty() && row.len().is_multiple_of(8) && super::avx2_available() {
            // SAFETY: AVX2 and FMA are present and the length a multiple of
            // 8 (checked).
            return Some(unsafe { softmax_unnormalised_avx2(row) });
        }
        let _ = row;
        None
    }

    /// As [`super::avx512::gelu_erf`], 8 lanes at a time.
    #[inline(always)]
    pub(super) fn gelu_erf(xs: &mut [f32]) -> usize {
        #[cfg(target_arch = "x86_64")]
        if super::avx2_available() {
            // SAFETY: AVX2 and FMA are present (checked).
            unsafe { gelu_erf_avx2(xs) };
            return xs.len() / 8 * 8;
        }
        let _ = xs;
        0
    }

    /// # Safety
    /// AVX2 and FMA; `row.len()` a non-zero multiple of 8.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn softmax_unnormalised_avx2(row: &mut [f32]) -> f32 {
        use std::arch::x86_64::*;
        let p = row.as_mut_ptr();
        let mut max = _mm256_set1_ps(f32::NEG_INFINITY);
        for i in (0..row.len()).step_by(8) {
            max = _mm256_max_ps(max, _mm256_loadu_ps(p.add(i)));
        }
        let max = _mm256_set1_ps(horizontal(max, f32::max));
        let mut sum = _mm256_setzero_ps();
        for i in (0..row.len()).step_by(8) {
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), max));
            _mm256_storeu_ps(p.add(i), e);
            sum = _mm256_add_ps(sum, e);
        }
        1.0 / horizontal(sum, |a, b| a + b)
    }

    /// The 8 lanes folded with `f`, pairwise.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn horizontal(x: std::arch::x86_64::__m256, f: impl Fn(f32, f32) -> f32) -> f32 {
        let mut lanes = [0f32; 8];
        // SAFETY: 8 lanes stored into 8 floats.
        unsafe { std::arch::x86_64::_mm256_storeu_ps(lanes.as_mut_ptr(), x) };
        let [a, b, c, d, e, g, h, i] = lanes;
        f(f(f(a, e), f(c, h)), f(f(b, g), f(d, i)))
    }

    /// # Safety
    /// AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn gelu_erf_avx2(xs: &mut [f32]) {
        use std::arch::x86_64::*;
        let sign_bit = _mm256_set1_ps(-0.0);
        for c in xs.chunks_exact_mut(8) {
            let x = _mm256_loadu_ps(c.as_ptr());
            let z = _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::FRAC_1_SQRT_2));
            let a = _mm256_andnot_ps(sign_bit, z);
            let t = _mm256_div_ps(
                _mm256_set1_ps(1.0),
                _mm256_fmadd_ps(_mm256_set1_ps(super::ERF_P), a, _mm256_set1_ps(1.0)),
            );
            let mut poly = _mm256_set1_ps(super::ERF_A[4]);
            for c in [super::ERF_A[3], super::ERF_A[2], super::ERF_A[1], super::ERF_A[0]] {
                poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(c));
            }
            poly = _mm256_mul_ps(poly, t);
            // erf(|z|) = 1 - poly · e^(-z²), then z's sign; gelu = x/2 · (1 + erf).
            let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), _mm256_mul_ps(a, a)));
            let erf_abs = _mm256_fnmadd_ps(poly, e, _mm256_set1_ps(1.0));
            let erf = _mm256_or_ps(erf_abs, _mm256_and_ps(z, sign_bit));
            let half_x = _mm256_mul_ps(x, _mm256_set1_ps(0.5));
            _mm256_storeu_ps(c.as_mut_ptr(), _mm256_fmadd_ps(half_x, erf, half_x));
        }
    }

    /// [`super::exp`] on 8 lanes: the same rounding trick, range reduction
    /// and polynomial, with fused multiply-adds, 2ⁿ put into the exponent
    /// bits.
    ///
    /// # Safety
    /// AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(super) unsafe fn exp8(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        const ROUND: f32 = 12_582_912.0;
        let x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.0)), _mm256_set1_ps(-87.0));
        let z = _mm256_fmadd_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E), _mm256_set1_ps(ROUND));
        let n = _mm256_sub_ps(z, _mm256_set1_ps(ROUND));
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(super::LN2_HI), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(super::LN2_LO), r);
        let mut p = _mm256_set1_ps(1.0 / 720.0);
        for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        // z's mantissa holds 2²² + n: shifted into the exponent field, plus the bias.
        let two_n =
            _mm256_add_epi32(_mm256_slli_epi32::<23>(_mm256_castps_si256(z)), _mm256_set1_epi32(127 << 23));
        _mm256_mul_ps(p, _mm256_castsi256_ps(two_n))
    }

    /// # Safety
    /// AVX2 and FMA; `q` readable at `r * qs + d` and `s` writable at `r *
    /// lp + j` for r < R, d < D, j < lp; `kt` readable at `d * lp + j`; `lp`
    /// a multiple of 16.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn scores_tile<const D: usize, const R: usize>(
        q: *const f32,
        qs: usize,
        kt: *const f32,
        lp: usize,
        s: *mut f32,
    ) {
        use std::arch::x86_64::*;
        // Two blocks of 8 keys by R rows: 2R independent FMA chains (8 for
        // a full tile), each key vector loaded once for the R rows.
        for jb in (0..lp).step_by(16) {
            let mut acc = [[_mm256_setzero_ps(); 2]; R];
            for (r, acc) in acc.iter_mut().enumerate() {
                for (i, acc) in acc.iter_mut().enumerate() {
                    *acc = _mm256_loadu_ps(s.add(r * lp + jb + 8 * i));
                }
            }
            for d in 0..D {
                let k = kt.add(d * lp + jb);
                let kv = [_mm256_loadu_ps(k), _mm256_loadu_ps(k.add(8))];
                for (r, acc) in acc.iter_mut().enumerate() {
                    let qv = _mm256_set1_ps(*q.add(r * qs + d));
                    for (acc, kv) in acc.iter_mut().zip(kv) {
                        *acc = _mm256_fmadd_ps(qv, kv, *acc);
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                for (i, acc) in acc.iter().enumerate() {
                    _mm256_storeu_ps(s.add(r * lp + jb + 8 * i), *acc);
                }
            }
        }
    }

    /// Columns `c..c + 8 V` of the tile's rows, two rows at a time (8
    /// accumulators, 4 values and a broadcast in registers for V = 4).
    ///
    /// # Safety
    /// As [`context_tile`], for rows r < `rows`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn context_rows<const D: usize, const V: usize>(
        p: &[f32],
        lp: usize,
        len: usize,
        v: &[f32],
        c: usize,
        o: &mut [f32],
        os: usize,
        rows: usize,
    ) {
        let (p, v, o) = (p.as_ptr(), v.as_ptr(), o.as_mut_ptr());
        let mut r = 0;
        while r + 2 <= rows {
            context_tile::<D, 2, V>(p.add(r * lp), lp, len, v.add(c), o.add(r * os + c), os);
            r += 2;
        }
        if r < rows {
            context_tile::<D, 1, V>(p.add(r * lp), lp, len, v.add(c), o.add(r * os + c), os);
        }
    }

    /// `V` vectors (8 V columns) of rows r < R: `o[r][..8V] = Σ_{j < len}
    /// p[r][j] · v[j][..8V]`, the arrays fixed in size so that they stay in
    /// registers.
    ///
    /// # Safety
    /// AVX2 and FMA; `p` readable at `r * lp + j` for r < R, j < len; `v`
    /// readable at `j * D + d` and `o` writable at `r * os + d` for d < 8 V.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn context_tile<const D: usize, const R: usize, const V: usize>(
        p: *const f32,
        lp: usize,
        len: usize,
        v: *const f32,
        o: *mut f32,
        os: usize,
    ) {
        use std::arch::x86_64::*;
        let mut acc = [[_mm256_setzero_ps(); V]; R];
        for j in 0..len {
            let mut vv = [_mm256_setzero_ps(); V];
            for (i, vv) in vv.iter_mut().enumerate() {
                *vv = _mm256_loadu_ps(v.add(j * D + 8 * i));
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let pv = _mm256_set1_ps(*p.add(r * lp + j));
                for (acc, vv) in acc.iter_mut().zip(vv) {
                    *acc = _mm256_fmadd_ps(pv, vv, *acc);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (i, acc) in acc.iter().enumerate() {
                _mm256_storeu_ps(o.add(r * os + 8 * i), *acc);
            }
        }
    }
}

/// The exact GELU, `x/2 · (1 + erf(x/√2))`, in place.
pub(crate) fn gelu_erf(xs: &mut [f32]) {
    let done = match avx512::gelu_erf(xs) {
        0 => avx2::gelu_erf(xs),
        done => done,
    };
    gelu_erf_slice(&mut xs[done..])
}

multiversion!(gelu_erf_slice(xs: &mut [f32]) {
    for x in xs {
        *x = 0.5 * *x * (1.0 + erf(*x * std::f32::consts::FRAC_1_SQRT_2));
    }
});

/// The constants of Abramowitz & Stegun 7.1.26 ([`erf`]).
const ERF_P: f32 = 0.327_591_1;
const ERF_A: [f32; 5] = [0.254_829_6, -0.284_496_74, 1.421_413_8, -1.453_152, 1.061_405_4];

/// erf by Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7, about
/// one f32 ulp near 1), branch-free so that loops over it vectorise.
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    let [a1, a2, a3, a4, a5] = ERF_A;
    let a = x.abs();
    let t = 1.0 / (1.0 + ERF_P * a);
    let poly = t * (a1 + t * (a2 + t * (a3 + t * (a4 + t * a5))));
    let y = 1.0 - poly * exp(-(a * a));
    y.copysign(x)
}

/// ln 2 split in two for [`exp`]'s range reduction: `LN2_HI` has few
/// mantissa bits, so `n · LN2_HI` is exact for the n that occur.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;

/// e^x for x ≤ 88 (below -87 it returns about 1e-38 instead of smaller
/// values or 0): 2^n by the exponent bits times a degree-6 Taylor polynomial
/// on |r| ≤ ln2/2 (relative error about 1.2e-7). Branch-free.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    // 1.5 · 2²³: adding it rounds x·log2(e) to an integer (ties to even)
    // held in the low mantissa bits, with no float-to-int conversion, whose
    // saturating `as` form the compiler leaves scalar.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let z = x * std::f32::consts::LOG2_E + ROUND;
    let n = z - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // z's mantissa is 2²² + n, n in [-126, 127]: shifted left by 23 it
    // leaves n in the exponent field (two's complement, wrapping), and
    // n + 127 is a valid biased exponent.
    f32::from_bits((z.to_bits() << 23).wrapping_add(127 << 23)) * p
}

/// A linear layer `y = x Wᵀ + b` with W in int8 (symmetric, one scale per
/// output channel) and x quantised per row when it runs, asymmetrically to
/// u8 (the operand VNNI wants unsigned): `x ≈ min + scale · q`, so
/// `x · w ≈ sw · (scale · Σ q·w + min · Σ w)` with `Σ q·w` exact in i32.
/// Asymmetric rows use all 256 levels on skewed inputs such as GELU outputs
/// (≥ -0.17), about twice the resolution of a symmetric scale there.
pub(crate) struct Int8Linear {
    /// Output channels.
    n: usize,
    /// Input features.
    k: usize,
    /// `k` rounded up to groups of 4 (one VNNI lane's worth).
    groups: usize,
    /// Channels in blocks of 16 (one 512-bit register of i32).
    blocks: usize,
    /// `[blocks][groups][16 channels][4 features]`: a block's 4 features of
    /// 16 channels lie in 64 consecutive bytes. Padding is 0.
    packed: Vec<i8>,
    /// Per channel (padded to `blocks * 16`): the weight scale, `Σ_k w` of
    /// the quantised weights, and the bias.
    scales: Vec<f32>,
    sums: Vec<f32>,
    bias: Vec<f32>,
}

impl Int8Linear {
    /// Quantises `weight` (`[n, k]` row-major) symmetrically per row.
    pub(crate) fn new(weight: &[f32], bias: Option<&[f32]>, n: usize, k: usize) -> Int8Linear {
        assert_eq!(weight.len(), n * k, "weight is not [n, k]");
        let groups = k.div_ceil(4);
        let blocks = n.div_ceil(16);
        let mut packed = vec![0i8; blocks * groups * 64];
        let mut scales = vec![0f32; blocks * 16];
        let mut sums = vec![0f32; blocks * 16];
        let mut bias_padded = vec![0f32; blocks * 16];
        for c in 0..n {
            let row = &weight[c * k..(c + 1) * k];
            let amax = row.iter().fold(0f32, |m, w| m.max(w.abs()));
            let (scale, inv) = if amax > 0.0 { (amax / 127.0, 127.0 / amax) } else { (0.0, 0.0) };
            scales[c] = scale;
            let (block, lane) = (c / 16, c % 16);
            let mut sum = 0i32;
            for (j, w) in row.iter().enumerate() {
                let q = (w * inv).round_ties_even().clamp(-127.0, 127.0) as i8;
                sum += q as i32;
                packed[(block * groups + j / 4) * 64 + lane * 4 + j % 4] = q;
            }
            sums[c] = sum as f32;
            if let Some(b) = bias {
                bias_padded[c] = b[c];
            }
        }
        Int8Linear { n, k, groups, blocks, packed, scales, sums, bias: bias_padded }
    }

    /// `act(x Wᵀ + b [+ residual])` for `x` `[m, k]` row-major; `residual` is
    /// `[m, n]`. Rows run in parallel on rayon's pool.
    pub(crate) fn forward(&self, x: &[f32], residual: Option<&[f32]>, act: Epilogue<'_>) -> Vec<f32> {
        self.forward_with(x, residual, act, self.best_kernel())
    }

    /// The fastest kernel this CPU runs for this layer's shape.
    pub(crate) fn best_kernel(&self) -> Int8Kernel {
        if amx_available() && self.amx_fits() {
            return Int8Kernel::Amx;
        }
        if vnni_available() {
            Int8Kernel::Vnni
        } else {
            Int8Kernel::Scalar
        }
    }

    /// Whether the AMX kernel takes this shape: features in whole steps of
    /// 64 (one tile row of bytes) and channel blocks in pairs (two weight
    /// tiles per step), as every layer of the BERT and XLM-RoBERTa models has.
    pub(crate) fn amx_fits(&self) -> bool {
        self.groups.is_multiple_of(16) && self.blocks.is_multiple_of(2)
    }

    /// As [`Int8Linear::forward`], with the kernel given (the caller checks
    /// that the CPU runs it: [`vnni_available`], [`amx_available`] and
    /// [`Int8Linear::amx_fits`]; the tests run every kernel a CPU has).
    pub(crate) fn forward_with(
        &self,
        x: &[f32],
        residual: Option<&[f32]>,
        act: Epilogue<'_>,
        kernel: Int8Kernel,
    ) -> Vec<f32> {
        // Without the CPU's support (or Linux's permission for the tile
        // state, which `amx_available` asks for) these kernels die of SIGILL.
        match kernel {
            Int8Kernel::Amx => {
                assert!(amx_available() && self.amx_fits(), "the AMX-INT8 kernel cannot run here")
            }
            Int8Kernel::Vnni => assert!(vnni_available(), "the VNNI kernel cannot run here"),
            Int8Kernel::Scalar => {}
        }
        let (n, k) = (self.n, self.k);
        let stride = self.groups * 4;
        rows_in_tasks(x, k, n, ROWS_PER_TASK, residual, act, |x, out, residual| {
            let rows = out.len() / n;
            // AMX multiplies whole tiles of 16 rows, two at a time: the rows
            // past the task's are zeros, and their sums are not stored.
            let padded = if kernel == Int8Kernel::Amx { rows.next_multiple_of(32) } else { rows };
            let mut qa = vec![0u8; padded * stride];
            let mut sa = vec![(0f32, 0f32); rows];
            quantize_rows(x, k, &mut qa, stride, &mut sa);
            match kernel {
                // SAFETY (both arms): checked above that the CPU runs the
                // kernel (and, for AMX, that the shape fits); `qa` holds
                // `padded` rows of `stride` bytes, `sa` `rows` pairs, `out`
                // and `residual` `rows` rows of `n` floats, as the kernels
                // require.
                #[cfg(target_arch = "x86_64")]
                Int8Kernel::Vnni => unsafe { self.matmul_vnni(&qa, &sa, rows, out, residual) },
                #[cfg(target_arch = "x86_64")]
                Int8Kernel::Amx => unsafe { self.matmul_amx(&qa, &sa, rows, out, residual) },
                _ => self.matmul_scalar(&qa, &sa, rows, out, residual),
            }
        })
    }

    /// The portable kernel: the same integer sums as the VNNI one, then the
    /// scale, bias and residual.
    fn matmul_scalar(
        &self,
        qa: &[u8],
        sa: &[(f32, f32)],
        rows: usize,
        out: &mut [f32],
        residual: Option<&[f32]>,
    ) {
        let (n, stride, groups) = (self.n, self.groups * 4, self.groups);
        let mut acc = [0i32; 16];
        for r in 0..rows {
            let a = &qa[r * stride..(r + 1) * stride];
            for block in 0..self.blocks {
                acc.fill(0);
                let w = &self.packed[block * groups * 64..(block + 1) * groups * 64];
                for (g, wg) in w.chunks_exact(64).enumerate() {
                    let ag = &a[g * 4..g * 4 + 4];
                    for (lane, wl) in wg.chunks_exact(4).enumerate() {
                        let mut s = 0i32;
                        for t in 0..4 {
                            s += ag[t] as i32 * wl[t] as i32;
                        }
                        acc[lane] += s;
                    }
                }
                for (lane, &sum) in acc.iter().enumerate() {
                    let c = block * 16 + lane;
                    if c < n {
                        let (scale, min) = sa[r];
                        let dot = sum as f32 * scale + min * self.sums[c];
                        let y = dot * self.scales[c] + self.bias[c];
                        out[r * n + c] = y + residual.map_or(0.0, |res| res[r * n + c]);
                    }
                }
            }
        }
    }
}

/// The integer matrix product of an [`Int8Linear`]; all three give the same
/// sums, and VNNI and AMX the same floats (one epilogue).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Int8Kernel {
    /// Plain Rust, any CPU.
    Scalar,
    /// AVX-512 VNNI (`vpdpbusd`): 16 channels × 4 features per instruction.
    Vnni,
    /// AMX-INT8 (`tdpbusd`): a 16 × 16 tile of sums over 64 features per
    /// instruction, on Intel Xeon from Sapphire Rapids on.
    Amx,
}

/// Whether the CPU and the kernel let this process run the AMX-INT8 kernel
/// (see [`Int8Kernel::Amx`]); `DATAFACTORY_CPU_AMX=0` turns it off (to
/// compare with VNNI on the same machine).
pub(crate) fn amx_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        amx::int8_available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the CPU and the kernel let this process run [`Bf16Linear`]
/// (AMX-BF16); `DATAFACTORY_CPU_AMX=0` turns it off.
pub(crate) fn amx_bf16_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        amx::bf16_available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A linear layer `y = x Wᵀ + b` in bf16 on AMX tiles (`tdpbf16ps`): W
/// rounded to bf16 once at load, each input row when it runs, the products
/// summed in f32; bias, residual and activation in f32 as on the f32 path.
/// For `dtype = "bf16"` on CPUs with AMX-BF16 (Intel Xeon from Sapphire
/// Rapids on), where it is several times faster than f32 at a cosine to the
/// f32 embeddings given in docs/BENCHMARKS.md.
pub(crate) struct Bf16Linear {
    /// Output channels.
    n: usize,
    /// Input features.
    k: usize,
    /// `k` rounded up to 32 (one tile row of bf16).
    kp: usize,
    /// Channels in blocks of 16, rounded up to pairs (two weight tiles a step).
    blocks: usize,
    /// `[blocks][kp / 2 pairs][16 channels][2 features]` as bf16 bits: a
    /// block's two features of 16 channels lie in 64 consecutive bytes, a
    /// weight tile's row. Padding is 0.
    packed: Vec<u16>,
    /// `n` biases (0 without a bias).
    bias: Vec<f32>,
}

impl Bf16Linear {
    /// Rounds `weight` (`[n, k]` row-major) to bf16 and packs it.
    pub(crate) fn new(weight: &[f32], bias: Option<&[f32]>, n: usize, k: usize) -> Bf16Linear {
        assert_eq!(weight.len(), n * k, "weight is not [n, k]");
        let kp = k.next_multiple_of(32);
        let blocks = n.div_ceil(16).next_multiple_of(2);
        let mut packed = vec![0u16; blocks * kp * 16];
        for c in 0..n {
            let (block, lane) = (c / 16, c % 16);
            for (j, &w) in weight[c * k..(c + 1) * k].iter().enumerate() {
                packed[(block * kp / 2 + j / 2) * 32 + lane * 2 + j % 2] = bf16_bits(w);
            }
        }
        let bias = bias.map_or_else(|| vec![0.0; n], <[f32]>::to_vec);
        Bf16Linear { n, k, kp, blocks, packed, bias }
    }

    /// `act(x Wᵀ + b [+ residual])` for `x` `[m, k]` row-major; `residual`
    /// is `[m, n]`. Rows run in parallel on rayon's pool.
    ///
    /// On AMX-BF16 when the CPU has it, else in plain Rust (the same sums
    /// in another order: correct everywhere, but slower than f32; the
    /// embedder makes this layer only where AMX-BF16 runs).
    pub(crate) fn forward(&self, x: &[f32], residual: Option<&[f32]>, act: Epilogue<'_>) -> Vec<f32> {
        self.forward_with(x, residual, act, amx_bf16_available())
    }

    /// As [`Bf16Linear::forward`], on AMX or not (`amx` only where
    /// [`amx_bf16_available`]: the tests run both).
    pub(crate) fn forward_with(
        &self,
        x: &[f32],
        residual: Option<&[f32]>,
        act: Epilogue<'_>,
        amx: bool,
    ) -> Vec<f32> {
        assert!(!amx || amx_bf16_available(), "AMX-BF16 is not available");
        let (n, k, kp) = (self.n, self.k, self.kp);
        rows_in_tasks(x, k, n, ROWS_PER_TASK, residual, act, |x, out, residual| {
            let rows = out.len() / n;
            // Whole tiles of 16 rows, two at a time: the rows past the
            // task's are zeros, their sums not stored.
            let mut a = vec![0u16; rows.next_multiple_of(32) * kp];
            for (x, a) in x.chunks_exact(k).zip(a.chunks_exact_mut(kp)) {
                for (a, &x) in a.iter_mut().zip(x) {
                    *a = bf16_bits(x);
                }
            }
            #[cfg(target_arch = "x86_64")]
            if amx {
                // SAFETY: AMX-BF16 asserted above; `a` holds `rows` rounded
                // up to 32 rows of `kp` bf16, `out` and `residual` `rows * n`
                // floats.
                unsafe { self.matmul_amx(&a, rows, out, residual) };
            } else {
                self.matmul_scalar(&a, rows, out, residual);
            }
            #[cfg(not(target_arch = "x86_64"))]
            self.matmul_scalar(&a, rows, out, residual);
        })
    }
}

/// `act(y)` for a linear layer's `y` (`[m, n]`) over `x` (`[m, k]`), in
/// parallel tasks of `rows_per_task` rows on rayon's pool: `task(x_rows,
/// out_rows, residual_rows)` writes a task's rows of `y` (bias and residual
/// included) over zeros, then the activation runs on them while they are
/// still in the core's cache.
fn rows_in_tasks(
    x: &[f32],
    k: usize,
    n: usize,
    rows_per_task: usize,
    residual: Option<&[f32]>,
    act: Epilogue<'_>,
    task: impl Fn(&[f32], &mut [f32], Option<&[f32]>) + Sync,
) -> Vec<f32> {
    assert_eq!(x.len() % k, 0, "input is not [m, k]");
    let m = x.len() / k;
    if let Some(r) = residual {
        assert_eq!(r.len(), m * n, "residual is not [m, n]");
    }
    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    out.spare_capacity_mut()[..m * n].par_chunks_mut(rows_per_task * n).enumerate().for_each(|(t, out)| {
        for o in out.iter_mut() {
            o.write(0.0);
        }
        // SAFETY: every element of `out` was just written; MaybeUninit<f32>
        // and f32 have the same layout.
        let out = unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<f32>(), out.len()) };
        let (r0, rows) = (t * rows_per_task, out.len() / n);
        task(&x[r0 * k..(r0 + rows) * k], out, residual.map(|res| &res[r0 * n..(r0 + rows) * n]));
        act.apply(out, n);
    });
    // SAFETY: the tasks above covered all m * n elements (the chunks tile
    // `[..m * n]`) and wrote each one.
    unsafe { out.set_len(m * n) };
    out
}

/// `act(x Wᵀ + bias [+ residual])` in f32 for `x` `[m, k]` and `w` `[n, k]`
/// (`bias` `[n]`, or empty for none): the output is first filled with the
/// bias and residual in parallel tasks, then one gemm call (on rayon's pool,
/// so that each block of W is packed once for all rows) adds the product
/// onto it, then the activation runs in place. No zeroed output, no separate
/// bias pass over a second buffer.
pub(crate) fn linear_f32(
    x: &[f32],
    k: usize,
    w: &[f32],
    bias: &[f32],
    residual: Option<&[f32]>,
    act: Epilogue<'_>,
) -> Vec<f32> {
    assert!(k > 0 && w.len().is_multiple_of(k), "weight is not [n, k]");
    assert!(x.len().is_multiple_of(k), "input is not [m, k]");
    let (m, n) = (x.len() / k, w.len() / k);
    assert!(bias.is_empty() || bias.len() == n, "bias is not [n]");
    if let Some(r) = residual {
        assert_eq!(r.len(), m * n, "residual is not [m, n]");
    }
    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    let chunk = ROWS_PER_TASK * n;
    out.spare_capacity_mut()[..m * n].par_chunks_mut(chunk).enumerate().for_each(|(t, out)| {
        let residual = residual.map(|r| &r[t * chunk..t * chunk + out.len()]);
        fill_rows(out, n, bias, residual);
    });
    // SAFETY: the chunks tile `[..m * n]` and fill_rows wrote every element.
    unsafe { out.set_len(m * n) };
    let threads = rayon::current_num_threads();
    // SAFETY: `out` is [m, n] row-major (row stride n), `x` [m, k] row-major
    // (row stride k), and Wᵀ is read from `w` [n, k] as [k, n] with row
    // stride 1 and column stride k: every index gemm forms is in bounds.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            true,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            1.0,
            1.0,
            false,
            false,
            false,
            if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None },
        )
    }
    if act != Epilogue::None {
        out.par_chunks_mut(chunk).for_each(|rows| act.apply(rows, n));
    }
    out
}

multiversion!(fill_rows(out: &mut [std::mem::MaybeUninit<f32>], n: usize, bias: &[f32], residual: Option<&[f32]>) {
    let zeros;
    let bias = if bias.is_empty() {
        zeros = vec![0f32; n];
        &zeros[..]
    } else {
        bias
    };
    match residual {
        Some(residual) => {
            for (o, r) in out.chunks_exact_mut(n).zip(residual.chunks_exact(n)) {
                for ((o, b), r) in o.iter_mut().zip(bias).zip(r) {
                    o.write(b + r);
                }
            }
        }
        None => {
            for o in out.chunks_exact_mut(n) {
                for (o, b) in o.iter_mut().zip(bias) {
                    o.write(*b);
                }
            }
        }
    }
});

impl Bf16Linear {
    /// The portable kernel: each output the f32 sum of the bf16 products.
    fn matmul_scalar(&self, a: &[u16], rows: usize, out: &mut [f32], residual: Option<&[f32]>) {
        let (n, k, kp) = (self.n, self.k, self.kp);
        for r in 0..rows {
            for c in 0..n {
                let (block, lane) = (c / 16, c % 16);
                let mut sum = 0f32;
                for j in 0..k {
                    let w = self.packed[(block * kp / 2 + j / 2) * 32 + lane * 2 + j % 2];
                    sum += bf16_value(a[r * kp + j]) * bf16_value(w);
                }
                out[r * n + c] = sum + self.bias[c] + residual.map_or(0.0, |res| res[r * n + c]);
            }
        }
    }
}

/// The f32 value of bf16 bits.
#[inline(always)]
fn bf16_value(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// `x` rounded to the nearest bf16 (ties to even), as its bits; NaN stays NaN.
#[inline(always)]
fn bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    ((bits + 0x7fff + ((bits >> 16) & 1)) >> 16) as u16
}

/// Whether the CPU runs the AVX-512 VNNI kernel.
pub(crate) fn vnni_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        avx512_enabled()
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the AVX-512 kernels run: the CPU has AVX-512F and
/// `DATAFACTORY_CPU_AVX512=0` does not turn them off (that setting runs, on
/// one machine, what CPUs without AVX-512 run: the AVX2 tier, no VNNI, no
/// AMX; gemm picks its own kernels regardless).
pub(crate) fn avx512_enabled() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ON.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx512f")
                && !std::env::var("DATAFACTORY_CPU_AVX512").is_ok_and(|v| v == "0")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the CPU has AVX2 and FMA: the tier the portable kernels are
/// compiled for where AVX-512 is missing or off (AMD EPYC before Zen 4,
/// Intel from Haswell on).
pub(crate) fn avx2_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

multiversion!(quantize_rows(x: &[f32], k: usize, qa: &mut [u8], stride: usize, sa: &mut [(f32, f32)]) {
    for ((x, q), s) in x.chunks_exact(k).zip(qa.chunks_exact_mut(stride)).zip(sa.iter_mut()) {
        *s = quantize_row(x, q);
    }
});

/// Quantises a row to u8 with `x ≈ min + scale · q` and returns `(scale,
/// min)`; `out`'s bytes past `x.len()` are left as they are (their weights
/// are 0).
#[inline(always)]
fn quantize_row(x: &[f32], out: &mut [u8]) -> (f32, f32) {
    let (min, max) = x.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let range = max - min;
    if range.is_nan() || range <= 0.0 || !range.is_finite() {
        // Constant (or empty, or non-finite) rows: every q is 0 and x = min.
        out[..x.len()].fill(0);
        return (0.0, if min.is_finite() { min } else { 0.0 });
    }
    let inv = 255.0 / range;
    // Adding and taking away 1.5 · 2^23 rounds to nearest even for values in
    // [0, 255] (vectorises, unlike `round_ties_even`, which calls rintf).
    const ROUND: f32 = 12_582_912.0;
    for (o, v) in out.iter_mut().zip(x) {
        *o = (((v - min) * inv).clamp(0.0, 255.0) + ROUND - ROUND) as u8;
    }
    (range / 255.0, min)
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use super::Int8Linear;
    use std::arch::x86_64::*;

    /// Rows per register tile.
    const MR: usize = 8;

    impl Int8Linear {
        /// `out = sw · (scale · Σ_k q·w + min · Σ_k w) + bias [+ residual]`
        /// for `rows` rows.
        ///
        /// # Safety
        /// The CPU must have AVX-512F, AVX-512BW and AVX-512 VNNI; `qa` must
        /// hold `rows * groups * 4` bytes, `sa` `rows` scales, `out` (and
        /// `residual` when given) `rows * n` floats.
        #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
        pub(super) unsafe fn matmul_vnni(
            &self,
            qa: &[u8],
            sa: &[(f32, f32)],
            rows: usize,
            out: &mut [f32],
            residual: Option<&[f32]>,
        ) {
            assert!(qa.len() >= rows * self.groups * 4 && sa.len() >= rows && out.len() >= rows * self.n);
            if let Some(r) = residual {
                assert!(r.len() >= rows * self.n);
            }
            let mut block = 0;
            while block < self.blocks {
                let nv = if block + 1 < self.blocks { 2 } else { 1 };
                let mut r = 0;
                while r < rows {
                    let tile_rows = (rows - r).min(MR);
                    // SAFETY (all arms): the tile covers rows r..r+tile_rows ≤
                    // rows and blocks block..block+nv ≤ self.blocks, inside
                    // the bounds asserted above.
                    unsafe {
                        match (tile_rows, nv) {
                            (8, 2) => self.tile::<8, 2>(qa, sa, r, block, out, residual),
                            (8, 1) => self.tile::<8, 1>(qa, sa, r, block, out, residual),
                            (7, 2) => self.tile::<7, 2>(qa, sa, r, block, out, residual),
                            (7, 1) => self.tile::<7, 1>(qa, sa, r, block, out, residual),
                            (6, 2) => self.tile::<6, 2>(qa, sa, r, block, out, residual),
                            (6, 1) => self.tile::<6, 1>(qa, sa, r, block, out, residual),
                            (5, 2) => self.tile::<5, 2>(qa, sa, r, block, out, residual),
                            (5, 1) => self.tile::<5, 1>(qa, sa, r, block, out, residual),
                            (4, 2) => self.tile::<4, 2>(qa, sa, r, block, out, residual),
                            (4, 1) => self.tile::<4, 1>(qa, sa, r, block, out, residual),
                            (3, 2) => self.tile::<3, 2>(qa, sa, r, block, out, residual),
                            (3, 1) => self.tile::<3, 1>(qa, sa, r, block, out, residual),
                            (2, 2) => self.tile::<2, 2>(qa, sa, r, block, out, residual),
                            (2, 1) => self.tile::<2, 1>(qa, sa, r, block, out, residual),
                            (1, 2) => self.tile::<1, 2>(qa, sa, r, block, out, residual),
                            _ => self.tile::<1, 1>(qa, sa, r, block, out, residual),
                        }
                    }
                    r += tile_rows;
                }
                block += nv;
            }
        }

        /// One tile: rows `r0..r0+R`, channel blocks `b0..b0+NV`.
        ///
        /// # Safety
        /// As [`Int8Linear::matmul_vnni`], and `r0 + R ≤ rows`,
        /// `b0 + NV ≤ self.blocks`.
        #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
        unsafe fn tile<const R: usize, const NV: usize>(
            &self,
            qa: &[u8],
            sa: &[(f32, f32)],
            r0: usize,
            b0: usize,
            out: &mut [f32],
            residual: Option<&[f32]>,
        ) {
            let groups = self.groups;
            let stride = groups * 4;
            let a = qa.as_ptr().add(r0 * stride);
            let w = self.packed.as_ptr().add(b0 * groups * 64);
            let mut acc = [[_mm512_setzero_si512(); NV]; R];
            for g in 0..groups {
                let mut wv = [_mm512_setzero_si512(); NV];
                for (v, wv) in wv.iter_mut().enumerate() {
                    // In bounds: block b0+v < blocks, group g < groups.
                    *wv = _mm512_loadu_si512(w.add((v * groups + g) * 64) as *const _);
                }
                for (i, acc) in acc.iter_mut().enumerate() {
                    // 4 bytes of row r0+i at features 4g..4g+4 < stride.
                    let av = _mm512_set1_epi32((a.add(i * stride + g * 4) as *const i32).read_unaligned());
                    for v in 0..NV {
                        acc[v] = _mm512_dpbusd_epi32(acc[v], av, wv[v]);
                    }
                }
            }
            for v in 0..NV {
                let channels = Channels::load(self, (b0 + v) * 16);
                for (i, acc) in acc.iter().enumerate() {
                    self.store_row(&channels, acc[v], r0 + i, sa, out, residual);
                }
            }
        }

        /// Row `row`'s outputs for `channels` from their i32 sums `acc`:
        /// `sw · (scale · acc + min · Σw) + bias [+ residual]`, only the real
        /// channels written. One epilogue for the VNNI and AMX kernels, so
        /// they give the same floats.
        ///
        /// # Safety
        /// AVX-512F; `row < sa.len()`, and `out` (and `residual`) hold row
        /// `row` of `n` floats.
        #[target_feature(enable = "avx512f")]
        #[inline]
        pub(super) unsafe fn store_row(
            &self,
            channels: &Channels,
            acc: __m512i,
            row: usize,
            sa: &[(f32, f32)],
            out: &mut [f32],
            residual: Option<&[f32]>,
        ) {
            let (n, c, mask) = (self.n, channels.c, channels.mask);
            let (row_scale, row_min) = sa[row];
            let dot = _mm512_fmadd_ps(
                _mm512_cvtepi32_ps(acc),
                _mm512_set1_ps(row_scale),
                _mm512_mul_ps(_mm512_set1_ps(row_min), channels.sums),
            );
            let mut y = _mm512_fmadd_ps(dot, channels.scale, channels.bias);
            if let Some(res) = residual {
                let rv = _mm512_maskz_loadu_ps(mask, res.as_ptr().add(row * n + c));
                y = _mm512_add_ps(y, rv);
            }
            _mm512_mask_storeu_ps(out.as_mut_ptr().add(row * n + c), mask, y);
        }
    }

    /// Channels `c..c+16` of a layer: their weight scales, weight sums and
    /// biases (the padded per-channel arrays hold all 16), and which of them
    /// are real (`mask`: the first `n - c`).
    pub(super) struct Channels {
        c: usize,
        mask: __mmask16,
        sums: __m512,
        scale: __m512,
        bias: __m512,
    }

    impl Channels {
        /// # Safety
        /// AVX-512F; `c` is a multiple of 16 below the layer's `n`.
        #[target_feature(enable = "avx512f")]
        #[inline]
        pub(super) unsafe fn load(layer: &Int8Linear, c: usize) -> Channels {
            let valid = (layer.n - c).min(16);
            let mask: __mmask16 = if valid == 16 { 0xffff } else { (1u16 << valid) - 1 };
            Channels {
                c,
                mask,
                sums: _mm512_loadu_ps(layer.sums.as_ptr().add(c)),
                scale: _mm512_loadu_ps(layer.scales.as_ptr().add(c)),
                bias: _mm512_loadu_ps(layer.bias.as_ptr().add(c)),
            }
        }
    }
}

/// AMX: tiles of sums per instruction, for [`Int8Linear`] (AMX-INT8,
/// `tdpbusd`: the same sums as the VNNI kernel) and [`Bf16Linear`] (AMX-BF16,
/// `tdpbf16ps`). The tile instructions are written in inline assembly
/// (stable Rust has no AMX intrinsics); the packed weights already have the
/// layout a weight tile wants (16 rows of 4 int8 or 2 bf16 features × 16
/// channels, 64 bytes apart). Both kernels take rows 32 at a time (two input
/// tiles) and channels 32 at a time (two weight tiles) into four tiles of
/// sums, 64 bytes of features per step.
#[cfg(target_arch = "x86_64")]
mod amx {
    use super::vnni::Channels;
    use super::{Bf16Linear, Int8Linear};
    use std::arch::asm;
    use std::arch::x86_64::*;
    use std::sync::OnceLock;

    /// Which AMX parts this process can use: CPUID says AMX-TILE (and
    /// AMX-INT8 / AMX-BF16), the AVX-512 epilogue can run, and Linux grants
    /// this process the tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM,
    /// XFEATURE_XTILEDATA)`, once, for all its threads; without it the first
    /// tile instruction would kill the process). `DATAFACTORY_CPU_AMX=0`
    /// says none (to compare with the kernels without AMX on one machine).
    fn parts() -> (bool, bool) {
        static PARTS: OnceLock<(bool, bool)> = OnceLock::new();
        *PARTS.get_or_init(|| {
            if std::env::var("DATAFACTORY_CPU_AMX").is_ok_and(|v| v == "0") || !super::vnni_available() {
                return (false, false);
            }
            // SAFETY: reading CPUID leaf 7 has no effect (every CPU with
            // AVX-512, checked above, has the leaf).
            #[allow(unused_unsafe)]
            let edx = unsafe { __cpuid_count(7, 0) }.edx;
            let (tile, bf16, int8) = (edx & (1 << 24) != 0, edx & (1 << 22) != 0, edx & (1 << 25) != 0);
            if !tile || !(bf16 || int8) || !request_tile_data() {
                return (false, false);
            }
            (int8, bf16)
        })
    }

    pub(super) fn int8_available() -> bool {
        parts().0
    }

    pub(super) fn bf16_available() -> bool {
        parts().1
    }

    /// `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`: 0 when granted.
    fn request_tile_data() -> bool {
        const SYS_ARCH_PRCTL: i64 = 158;
        const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
        const XFEATURE_XTILEDATA: i64 = 18;
        let ret: i64;
        // SAFETY: a system call that only changes this process's permission
        // to use the AMX state; it reads and writes no memory of ours.
        unsafe {
            asm!(
                "syscall",
                inlateout("rax") SYS_ARCH_PRCTL => ret,
                in("rdi") ARCH_REQ_XCOMP_PERM,
                in("rsi") XFEATURE_XTILEDATA,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        ret == 0
    }

    /// Loads the tile configuration: palette 1, all eight tiles 16 rows of
    /// 64 bytes (tmm0-3 sums, 16 × 16 of i32 or f32; tmm4-5 input rows;
    /// tmm6-7 weights).
    ///
    /// # Safety
    /// A part of AMX is available ([`parts`]); pair with [`release`].
    #[inline(always)]
    unsafe fn configure() {
        let mut config = [0u8; 64];
        config[0] = 1;
        for t in 0..8 {
            config[16 + 2 * t] = 64;
            config[48 + t] = 16;
        }
        // SAFETY: a valid palette-1 configuration of 64 bytes.
        unsafe { asm!("ldtilecfg [{}]", in(reg) config.as_ptr(), options(nostack, readonly)) };
    }

    /// # Safety
    /// After [`configure`].
    #[inline(always)]
    unsafe fn release() {
        // SAFETY: gives the tile state back; no memory touched.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }

    /// # Safety
    /// After [`configure`].
    #[inline(always)]
    unsafe fn zero_sums() {
        // SAFETY: tiles configured; no memory touched.
        unsafe {
            asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem))
        };
    }

    /// Stores the four tiles of sums as `[32 rows][32 channels]` of 4 bytes.
    ///
    /// # Safety
    /// After [`configure`]; `to` points at 32 × 32 × 4 writable bytes.
    #[inline(always)]
    unsafe fn store_sums(to: *mut u8) {
        // SAFETY: each store writes 16 rows of 64 bytes, 128 bytes apart,
        // inside the 4 KiB at `to`.
        unsafe {
            asm!(
                "tilestored [{s0} + {row}], tmm0",
                "tilestored [{s1} + {row}], tmm1",
                "tilestored [{s2} + {row}], tmm2",
                "tilestored [{s3} + {row}], tmm3",
                s0 = in(reg) to,
                s1 = in(reg) to.add(64),
                s2 = in(reg) to.add(16 * 128),
                s3 = in(reg) to.add(16 * 128 + 64),
                row = in(reg) 128usize,
                options(nostack),
            )
        };
    }

    /// One step of 64 bytes of features: input tiles at `a` and `a + 16
    /// rows` (`stride` bytes a row), weight tiles at `w` and `w + w_next`
    /// (64 bytes a row), added into the four tiles of sums; `$op` is the
    /// tile product (`tdpbusd` or `tdpbf16ps`).
    macro_rules! step {
        ($op:literal, $a:expr, $stride:expr, $w:expr, $w_next:expr) => {
            asm!(
                "tileloadd tmm4, [{a0} + {stride}]",
                "tileloadd tmm5, [{a1} + {stride}]",
                "tileloadd tmm6, [{w0} + {wstride}]",
                "tileloadd tmm7, [{w1} + {wstride}]",
                concat!($op, " tmm0, tmm4, tmm6"),
                concat!($op, " tmm1, tmm4, tmm7"),
                concat!($op, " tmm2, tmm5, tmm6"),
                concat!($op, " tmm3, tmm5, tmm7"),
                a0 = in(reg) $a,
                a1 = in(reg) $a.add(16 * $stride),
                w0 = in(reg) $w,
                w1 = in(reg) $w.add($w_next),
                stride = in(reg) $stride,
                wstride = in(reg) 64usize,
                options(nostack, readonly),
            )
        };
    }

    impl Int8Linear {
        /// As [`Int8Linear::matmul_vnni`], with AMX-INT8 tiles.
        ///
        /// # Safety
        /// [`int8_available`] and [`Int8Linear::amx_fits`]; `qa` holds `rows`
        /// rounded up to 32 rows of `groups * 4` bytes, `sa` `rows` pairs,
        /// `out` (and `residual`) `rows * n` floats.
        pub(super) unsafe fn matmul_amx(
            &self,
            qa: &[u8],
            sa: &[(f32, f32)],
            rows: usize,
            out: &mut [f32],
            residual: Option<&[f32]>,
        ) {
            let groups = self.groups;
            let stride = groups * 4;
            let padded = rows.next_multiple_of(32);
            assert!(self.amx_fits());
            assert!(qa.len() >= padded * stride && sa.len() >= rows && out.len() >= rows * self.n);
            if let Some(r) = residual {
                assert!(r.len() >= rows * self.n);
            }
            let mut sums = [0i32; 32 * 32];
            // SAFETY (the blocks below): the caller checked AMX-INT8; every
            // load reads 16 rows of 64 bytes inside `qa` (rows r..r+32 ≤
            // padded, features g0*4..g0*4+64 ≤ stride) or inside `packed`
            // (blocks b, b+1 < blocks, groups g0..g0+16 ≤ groups); the
            // epilogue runs on AVX-512F (checked with AMX) for channels in
            // the padded per-channel arrays and rows r+i < rows.
            unsafe {
                configure();
                for r in (0..padded).step_by(32) {
                    for b in (0..self.blocks).step_by(2) {
                        zero_sums();
                        for g0 in (0..groups).step_by(16) {
                            let a = qa.as_ptr().add(r * stride + g0 * 4);
                            let w = self.packed.as_ptr().add((b * groups + g0) * 64);
                            step!("tdpbusd", a, stride, w, groups * 64);
                        }
                        store_sums(sums.as_mut_ptr() as *mut u8);
                        let channels = [Channels::load(self, b * 16), Channels::load(self, (b + 1) * 16)];
                        for i in 0..(rows - r).min(32) {
                            for (v, channels) in channels.iter().enumerate() {
                                let acc = _mm512_loadu_si512(sums.as_ptr().add(i * 32 + v * 16) as *const _);
                                self.store_row(channels, acc, r + i, sa, out, residual);
                            }
                        }
                    }
                }
                release();
            }
        }
    }

    impl Bf16Linear {
        /// `out = a Wᵀ + bias [+ residual]` for `rows` rows of bf16 inputs.
        ///
        /// # Safety
        /// [`bf16_available`]; `a` holds `rows` rounded up to 32 rows of `kp`
        /// bf16, `out` (and `residual`) `rows * n` floats.
        pub(super) unsafe fn matmul_amx(
            &self,
            a: &[u16],
            rows: usize,
            out: &mut [f32],
            residual: Option<&[f32]>,
        ) {
            let (n, kp) = (self.n, self.kp);
            let stride = kp * 2;
            let block_bytes = kp / 2 * 64;
            let padded = rows.next_multiple_of(32);
            assert!(a.len() >= padded * kp && out.len() >= rows * n);
            if let Some(r) = residual {
                assert!(r.len() >= rows * n);
            }
            let weights = self.packed.as_ptr() as *const u8;
            let inputs = a.as_ptr() as *const u8;
            let mut sums = [0f32; 32 * 32];
            // SAFETY (the block below): the caller checked AMX-BF16; every
            // load reads 16 rows of 64 bytes inside `a` (rows r..r+32 ≤
            // padded, bytes 2s..2s+64 ≤ stride) or inside `packed` (blocks
            // b, b+1 < blocks, pairs s/2..s/2+16 ≤ kp/2).
            unsafe {
                configure();
                for r in (0..padded).step_by(32) {
                    for b in (0..self.blocks).step_by(2) {
                        zero_sums();
                        for s in (0..kp).step_by(32) {
                            let a = inputs.add(r * stride + s * 2);
                            let w = weights.add(b * block_bytes + s / 2 * 64);
                            step!("tdpbf16ps", a, stride, w, block_bytes);
                        }
                        store_sums(sums.as_mut_ptr() as *mut u8);
                        let (c0, c1) = (b * 16, ((b + 2) * 16).min(n));
                        for i in 0..(rows - r).min(32) {
                            let row = (r + i) * n;
                            let sums = &sums[i * 32..i * 32 + (c1 - c0)];
                            let out = &mut out[row + c0..row + c1];
                            let bias = &self.bias[c0..c1];
                            match residual {
                                Some(res) => {
                                    for (((o, s), b), x) in
                                        out.iter_mut().zip(sums).zip(bias).zip(&res[row + c0..row + c1])
                                    {
                                        *o = s + b + x;
                                    }
                                }
                                None => {
                                    for ((o, s), b) in out.iter_mut().zip(sums).zip(bias) {
                                        *o = s + b;
                                    }
                                }
                            }
                        }
                    }
                }
                release();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    #[test]
    fn erf_and_exp_are_accurate() {
        let mut worst_exp = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            worst_exp = worst_exp.max(((exp(x) as f64 - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst_exp < 5e-7, "exp relative error {worst_exp}");
        // The AVX-512 form used by the attention softmax, where the CPU has it.
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            let xs: Vec<f32> = (0..12_768).map(|i| -87.0 + i as f32 * 0.0137).collect(); // up to 87.9
            let mut worst = 0f64;
            for c in xs.chunks_exact(16) {
                let mut got = [0f32; 16];
                // SAFETY: AVX-512F is present (checked); 16 lanes in and out.
                unsafe {
                    use std::arch::x86_64::*;
                    _mm512_storeu_ps(got.as_mut_ptr(), avx512::exp16(_mm512_loadu_ps(c.as_ptr())));
                }
                for (x, g) in c.iter().zip(got) {
                    let want = (*x as f64).exp();
                    worst = worst.max(((g as f64 - want) / want).abs());
                }
            }
            assert!(worst < 5e-7, "exp16 relative error {worst}");
            // A masked score (MASK_VALUE below the row's maximum) is 0, or
            // next to it, never NaN.
            let mut masked = [0f32; 16];
            // SAFETY: as above.
            unsafe {
                use std::arch::x86_64::*;
                _mm512_storeu_ps(
                    masked.as_mut_ptr(),
                    avx512::exp16(_mm512_set1_ps(crate::encoder::MASK_VALUE)),
                );
            }
            assert!(masked.iter().all(|m| (0.0..1e-37).contains(m)), "{masked:?}");
        }
        // The AVX2 form, where the CPU has AVX2 and FMA (whether or not it
        // has AVX-512: the tier CPUs without it run).
        #[cfg(target_arch = "x86_64")]
        if avx2_available() {
            let mut xs: Vec<f32> = (0..12_768).map(|i| -87.0 + i as f32 * 0.0137).collect();
            xs.push(crate::encoder::MASK_VALUE);
            xs.resize(xs.len().div_ceil(8) * 8, crate::encoder::MASK_VALUE);
            let mut worst = 0f64;
            for c in xs.chunks_exact(8) {
                let mut got = [0f32; 8];
                // SAFETY: AVX2 and FMA are present (checked); 8 lanes in and out.
                unsafe {
                    use std::arch::x86_64::*;
                    _mm256_storeu_ps(got.as_mut_ptr(), avx2::exp8(_mm256_loadu_ps(c.as_ptr())));
                }
                for (x, g) in c.iter().zip(got) {
                    if *x == crate::encoder::MASK_VALUE {
                        assert!((0.0..1e-37).contains(&g), "exp8({x}) = {g}");
                        continue;
                    }
                    let want = (*x as f64).exp();
                    worst = worst.max(((g as f64 - want) / want).abs());
                }
            }
            assert!(worst < 5e-7, "exp8 relative error {worst}");
        }
        // erf against the series/continued fraction in f64 via libm-free
        // reference: erf(x) = 2/sqrt(pi) * sum ... (Taylor, |x| ≤ 3).
        let erf64 = |x: f64| -> f64 {
            let mut term = x;
            let mut sum = x;
            for n in 1..200 {
                term *= -x * x / n as f64;
                sum += term / (2 * n + 1) as f64;
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        };
        let mut worst = 0f64;
        let mut x = -3.0f32;
        while x <= 3.0 {
            worst = worst.max((erf(x) as f64 - erf64(x as f64)).abs());
            x += 0.001;
        }
        assert!(worst < 6e-7, "erf absolute error {worst}");
        assert_eq!(erf(10.0), 1.0);
        assert_eq!(erf(-10.0), -1.0);
        let mut g = [0.0f32, 1.0, -1.0, 30.0, -30.0];
        gelu_erf(&mut g);
        assert_eq!(g[0], 0.0);
        assert!((g[1] - 0.841_344_8).abs() < 1e-6 && (g[2] + 0.158_655_3).abs() < 1e-6);
        assert_eq!(g[3], 30.0);
        assert_eq!(g[4], -0.0);
        // A slice long enough for the 16-lane path (AVX-512) and a remainder
        // for the scalar one, against erf in f64; ±30 at both ends.
        let mut xs: Vec<f32> = (0..1003).map(|i| -4.2 + i as f32 * 0.0084).collect();
        xs[0] = -30.0;
        xs[1002] = 30.0;
        let mut g = xs.clone();
        gelu_erf(&mut g);
        for (x, g) in xs.iter().zip(&g) {
            let x = *x as f64;
            let want = if x.abs() > 5.0 {
                x.max(0.0)
            } else {
                0.5 * x * (1.0 + erf64(x / std::f64::consts::SQRT_2))
            };
            assert!((*g as f64 - want).abs() < 2e-6 * x.abs().max(1.0), "gelu({x}) = {g}, want {want}");
        }
    }

    #[test]
    fn masked_softmax_matches_the_definition() {
        let (b, heads, l, len) = (2, 3, 2, 5);
        let mut seed = 7;
        let scores: Vec<f32> = (0..b * heads * l * len).map(|_| lcg(&mut seed) * 4.0).collect();
        let bias: Vec<f32> =
            (0..b * len).map(|i| if i % len >= 3 + i / len { -1.0e9 } else { 0.0 }).collect();
        let mut got = scores.clone();
        masked_softmax(&mut got, &bias, heads, l, len);
        for (row_index, (row, want_row)) in got.chunks(len).zip(scores.chunks(len)).enumerate() {
            let batch = row_index / (heads * l);
            let z: Vec<f64> =
                want_row.iter().zip(&bias[batch * len..]).map(|(s, m)| *s as f64 + *m as f64).collect();
            let max = z.iter().cloned().fold(f64::MIN, f64::max);
            let sum: f64 = z.iter().map(|v| (v - max).exp()).sum();
            for (g, v) in row.iter().zip(&z) {
                assert!((*g as f64 - (v - max).exp() / sum).abs() < 1e-6);
            }
        }
    }

    fn attention_reference(
        qkv: &[f32],
        mask: &[f32],
        b: usize,
        len: usize,
        heads: usize,
        d: usize,
    ) -> Vec<f32> {
        let h = heads * d;
        let mut out = vec![0f32; b * len * h];
        for i in 0..b {
            let tok = |t: usize| &qkv[(i * len + t) * 3 * h..(i * len + t + 1) * 3 * h];
            for head in 0..heads {
                for t in 0..len {
                    let q = &tok(t)[head * d..(head + 1) * d];
                    let s: Vec<f64> = (0..len)
                        .map(|j| {
                            let k = &tok(j)[h + head * d..h + (head + 1) * d];
                            q.iter().zip(k).map(|(a, b)| (*a * *b) as f64).sum::<f64>()
                                + mask[i * len + j] as f64
                        })
                        .collect();
                    let max = s.iter().cloned().fold(f64::MIN, f64::max);
                    let z: f64 = s.iter().map(|x| (x - max).exp()).sum();
                    for x in 0..d {
                        let o: f64 = (0..len)
                            .map(|j| (s[j] - max).exp() / z * tok(j)[2 * h + head * d + x] as f64)
                            .sum();
                        out[(i * len + t) * h + head * d + x] = o as f32;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn attention_matches_the_definition() {
        // Lengths that are and are not multiples of 16 and 64 keys or of 4
        // query rows, and length 1; the second sequence is padded (masked)
        // after 13 tokens.
        for &(b, len, heads) in
            &[(2usize, 21usize, 3usize), (1, 4, 2), (3, 40, 1), (2, 83, 2), (1, 1, 2), (2, 64, 1)]
        {
            let mut seed = (b * 100 + len) as u64;
            // Head sizes of whole blocks of 16 or 32 columns and of a 24 or
            // 48-column tail (the AVX2 tiles take 32 at a time).
            for d in [16, 24, 32, 48, 64] {
                let qkv: Vec<f32> = (0..b * len * 3 * heads * d).map(|_| lcg(&mut seed)).collect();
                let mask: Vec<f32> = (0..b * len)
                    .map(|i| if i / len == 1 && i % len >= 13 { crate::encoder::MASK_VALUE } else { 0.0 })
                    .collect();
                let got = match d {
                    16 => attention::<16>(&qkv, &mask, b, len, heads),
                    24 => attention::<24>(&qkv, &mask, b, len, heads),
                    32 => attention::<32>(&qkv, &mask, b, len, heads),
                    48 => attention::<48>(&qkv, &mask, b, len, heads),
                    _ => attention::<64>(&qkv, &mask, b, len, heads),
                };
                let want = attention_reference(&qkv, &mask, b, len, heads, d);
                let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(err < 1e-5, "b={b} len={len} heads={heads} d={d}: error {err}");
            }
        }
    }

    /// The kernels' tests again in a child process with
    /// `DATAFACTORY_CPU_AVX512=0`: on a CPU with AVX-512 this runs the AVX2
    /// tier (and the int8 and bf16 layers' portable kernels), as CPUs
    /// without AVX-512 do; elsewhere it repeats what already ran.
    #[test]
    fn the_kernel_tests_pass_without_avx512() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["kernels::tests::", "--skip", "without_avx512", "--test-threads", "2"])
            .env("DATAFACTORY_CPU_AVX512", "0")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
        let passed = text
            .lines()
            .find_map(|l| l.strip_prefix("test result: ok. ")?.split(' ').next()?.parse::<usize>().ok());
        assert!(passed.is_some_and(|n| n >= 5), "{text}");
    }

    #[test]
    fn f32_linear_matches_the_definition() {
        // Rows that are and are not a multiple of the fill task (64), odd
        // features and channels, one row; with and without bias, residual
        // and GELU.
        for &(m, k, n) in
            &[(70usize, 37usize, 50usize), (1, 5, 3), (130, 384, 96), (64, 16, 1152), (1100, 24, 40)]
        {
            let mut seed = (m * 131 + k * 17 + n) as u64;
            let w: Vec<f32> = (0..n * k).map(|_| lcg(&mut seed) * 0.1).collect();
            let bias: Vec<f32> = (0..n).map(|_| lcg(&mut seed)).collect();
            let x: Vec<f32> = (0..m * k).map(|_| lcg(&mut seed)).collect();
            let res: Vec<f32> = (0..m * n).map(|_| lcg(&mut seed)).collect();
            let gamma: Vec<f32> = (0..n).map(|_| 1.0 + lcg(&mut seed) * 0.5).collect();
            let beta: Vec<f32> = (0..n).map(|_| lcg(&mut seed)).collect();
            let norm = Epilogue::LayerNorm { gamma: &gamma, beta: &beta, eps: 1e-12 };
            for (with_bias, residual, act) in [
                (true, Some(&res[..]), Epilogue::GeluErf),
                (true, None, Epilogue::None),
                (false, Some(&res[..]), Epilogue::None),
                (false, None, Epilogue::GeluErf),
                (true, Some(&res[..]), norm),
            ] {
                let b = if with_bias { &bias[..] } else { &[][..] };
                let got = linear_f32(&x, k, &w, b, residual, act);
                let mut want = vec![0f32; m * n];
                for r in 0..m {
                    for c in 0..n {
                        let dot: f64 = (0..k).map(|j| x[r * k + j] as f64 * w[c * k + j] as f64).sum();
                        let extra =
                            b.get(c).copied().unwrap_or(0.0) + residual.map_or(0.0, |res| res[r * n + c]);
                        want[r * n + c] = (dot + extra as f64) as f32;
                    }
                }
                if act == Epilogue::GeluErf {
                    gelu_erf(&mut want);
                }
                if act == norm && n == 1 {
                    continue; // one feature: the normalised value is 0/0
                }
                if act == norm {
                    for row in want.chunks_exact_mut(n) {
                        let mean = row.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
                        let var = row.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n as f64;
                        for ((x, g), b) in row.iter_mut().zip(&gamma).zip(&beta) {
                            *x = ((*x as f64 - mean) / (var + 1e-12).sqrt() * *g as f64 + *b as f64) as f32;
                        }
                    }
                }
                let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(
                    err < 1e-5,
                    "m={m} k={k} n={n} bias={with_bias} residual={} {act:?}: error {err}",
                    residual.is_some()
                );
            }
        }
    }

    #[test]
    fn int8_linear_is_close_to_f32_and_kernels_agree() {
        // Odd sizes: padding of features (k % 4) and channels (n % 16), and
        // a row count that is not a multiple of the tile or the task.
        // The last four fit the AMX kernel (features in 64s, channel blocks
        // in pairs): rows 1, 33, 70 and 130 leave the 32-row tiles part full,
        // 50 channels the last block.
        for &(m, k, n) in &[
            (70, 37, 50),
            (9, 384, 48),
            (130, 64, 16),
            (1, 5, 3),
            (70, 128, 96),
            (33, 64, 32),
            (1, 384, 64),
            (130, 256, 50),
        ] {
            let mut seed = (m * 31 + k * 7 + n) as u64;
            let w: Vec<f32> = (0..n * k).map(|_| lcg(&mut seed) * 0.1).collect();
            let bias: Vec<f32> = (0..n).map(|_| lcg(&mut seed)).collect();
            let x: Vec<f32> = (0..m * k).map(|_| lcg(&mut seed)).collect();
            let res: Vec<f32> = (0..m * n).map(|_| lcg(&mut seed)).collect();
            let lin = Int8Linear::new(&w, Some(&bias), n, k);
            let scalar = lin.forward_with(&x, Some(&res), Epilogue::GeluErf, Int8Kernel::Scalar);
            let mut exact = vec![0f32; m * n];
            for r in 0..m {
                for c in 0..n {
                    let dot: f32 = (0..k).map(|j| x[r * k + j] * w[c * k + j]).sum();
                    exact[r * n + c] = dot + bias[c] + res[r * n + c];
                }
            }
            gelu_erf(&mut exact);
            let err = scalar.iter().zip(&exact).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(err < 0.02 * (k as f32).sqrt() * 0.1, "m={m} k={k} n={n}: error {err}");
            if vnni_available() {
                let fast = lin.forward_with(&x, Some(&res), Epilogue::GeluErf, Int8Kernel::Vnni);
                let diff = fast.iter().zip(&scalar).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(diff < 1e-5, "m={m} k={k} n={n}: VNNI and scalar differ by {diff}");
                let plain = lin.forward_with(&x, None, Epilogue::None, Int8Kernel::Vnni);
                let plain_scalar = lin.forward_with(&x, None, Epilogue::None, Int8Kernel::Scalar);
                let diff = plain.iter().zip(&plain_scalar).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(diff < 1e-5, "VNNI and scalar differ by {diff} without residual");
                if amx_available() && lin.amx_fits() {
                    // The same integer sums through the same epilogue: the
                    // same floats, bit for bit.
                    let tiles = lin.forward_with(&x, Some(&res), Epilogue::GeluErf, Int8Kernel::Amx);
                    assert_eq!(tiles, fast, "m={m} k={k} n={n}: AMX and VNNI differ");
                    let tiles = lin.forward_with(&x, None, Epilogue::None, Int8Kernel::Amx);
                    assert_eq!(tiles, plain, "m={m} k={k} n={n}: AMX and VNNI differ without residual");
                }
            }
        }
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(bf16_value(bf16_bits(1.0)), 1.0);
        assert_eq!(bf16_value(bf16_bits(-2.5)), -2.5);
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties to even (1);
        // a hair above it rounds up.
        assert_eq!(bf16_value(bf16_bits(1.0 + 1.0 / 256.0)), 1.0);
        assert_eq!(
            bf16_value(bf16_bits(f32::from_bits((1.0f32 + 1.0 / 256.0).to_bits() + 1))),
            1.0 + 1.0 / 128.0
        );
        // 1 + 3·2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: to even (up).
        assert_eq!(bf16_value(bf16_bits(1.0 + 3.0 / 256.0)), 1.0 + 1.0 / 64.0);
        assert_eq!(bf16_value(bf16_bits(f32::MAX)), f32::INFINITY);
        assert!(bf16_value(bf16_bits(f32::NAN)).is_nan());
        assert_eq!(bf16_value(bf16_bits(f32::NEG_INFINITY)), f32::NEG_INFINITY);
    }

    #[test]
    fn bf16_linear_sums_the_rounded_products_and_kernels_agree() {
        let amx = amx_bf16_available();
        eprintln!("this CPU: AMX-BF16 {amx}");
        for &(m, k, n) in &[(70, 37, 50), (33, 384, 64), (1, 5, 3), (130, 64, 16), (9, 96, 40)] {
            let mut seed = (m * 17 + k * 5 + n) as u64;
            let w: Vec<f32> = (0..n * k).map(|_| lcg(&mut seed) * 0.1).collect();
            let bias: Vec<f32> = (0..n).map(|_| lcg(&mut seed)).collect();
            let x: Vec<f32> = (0..m * k).map(|_| lcg(&mut seed)).collect();
            let res: Vec<f32> = (0..m * n).map(|_| lcg(&mut seed)).collect();
            let lin = Bf16Linear::new(&w, Some(&bias), n, k);
            let round = |v: f32| bf16_value(bf16_bits(v)) as f64;
            let mut exact = vec![0f32; m * n];
            let mut unrounded = vec![0f32; m * n];
            for r in 0..m {
                for c in 0..n {
                    let dot: f64 = (0..k).map(|j| round(x[r * k + j]) * round(w[c * k + j])).sum();
                    exact[r * n + c] = (dot + bias[c] as f64 + res[r * n + c] as f64) as f32;
                    let dot: f32 = (0..k).map(|j| x[r * k + j] * w[c * k + j]).sum();
                    unrounded[r * n + c] = dot + bias[c] + res[r * n + c];
                }
            }
            gelu_erf(&mut exact);
            gelu_erf(&mut unrounded);
            let max_diff =
                |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            let scalar = lin.forward_with(&x, Some(&res), Epilogue::GeluErf, false);
            // Only the order of the f32 additions differs from the exact sum.
            let err = max_diff(&scalar, &exact);
            assert!(err < 1e-5 * k as f32, "m={m} k={k} n={n}: scalar off the rounded products by {err}");
            // And rounding to bf16 costs about 2^-9 of each product.
            let err = max_diff(&scalar, &unrounded);
            assert!(err < 0.01, "m={m} k={k} n={n}: bf16 off f32 by {err}");
            if amx {
                let tiles = lin.forward_with(&x, Some(&res), Epilogue::GeluErf, true);
                let err = max_diff(&tiles, &exact);
                assert!(err < 1e-5 * k as f32, "m={m} k={k} n={n}: AMX off the rounded products by {err}");
                let plain = lin.forward_with(&x, None, Epilogue::None, true);
                let plain_scalar = lin.forward_with(&x, None, Epilogue::None, false);
                let err = max_diff(&plain, &plain_scalar);
                assert!(
                    err < 1e-5 * k as f32,
                    "m={m} k={k} n={n}: AMX and scalar differ by {err} without residual"
                );
            }
        }
    }

    /// Which shapes the AMX kernel takes, and that a CPU with AMX uses it
    /// for them (this machine's CPU is printed, so a run says what it tested).
    #[test]
    fn amx_kernel_is_chosen_where_it_fits() {
        let layer = |k: usize, n: usize| Int8Linear::new(&vec![0.5; n * k], None, n, k);
        assert!(layer(384, 1536).amx_fits() && layer(1024, 4096).amx_fits() && layer(64, 17).amx_fits());
        assert!(!layer(37, 64).amx_fits() && !layer(384, 16).amx_fits() && !layer(96, 64).amx_fits());
        let (amx, vnni) = (amx_available(), vnni_available());
        eprintln!("this CPU: AMX-INT8 {amx}, AVX-512 VNNI {vnni}");
        let expected = if amx {
            Int8Kernel::Amx
        } else if vnni {
            Int8Kernel::Vnni
        } else {
            Int8Kernel::Scalar
        };
        assert_eq!(layer(384, 1536).best_kernel(), expected);
        let expected = if vnni { Int8Kernel::Vnni } else { Int8Kernel::Scalar };
        assert_eq!(layer(37, 64).best_kernel(), expected);
    }
}
