//! Inner products for the vector index, on AVX-512 where the CPU has it.
//!
//! The index stores unit-length vectors and ranks by inner product (for unit
//! vectors the same order and the same value as cosine similarity, in one
//! pass instead of cosine's three sums). usearch's builtin kernels (NumKong)
//! are written for accuracy over speed on this shape: f32 sums in f64, and
//! f16 runs one chain of fused multiply-adds, so each product waits on the
//! one before (about 4 cycles each). The kernels here keep four independent
//! f32 accumulators of 16 lanes, which the CPU runs in parallel; with the
//! graph walk's cache misses, that was the difference between 0.65x and
//! parity with FAISS (docs/BENCHMARKS.md, "Vector index").
//!
//! [`Kernels::detect`] picks them once, when an index is opened; a CPU
//! without AVX-512F (or, for bf16, AVX512-BF16) keeps usearch's builtin
//! inner product, which dispatches to AVX2 or NEON itself.

/// Which of our kernels the CPU can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kernels {
    pub avx512: bool,
    pub avx512_bf16: bool,
}

impl Kernels {
    pub fn detect() -> Kernels {
        #[cfg(target_arch = "x86_64")]
        {
            let avx512 = std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vl")
                && std::arch::is_x86_feature_detected!("f16c");
            Kernels { avx512, avx512_bf16: avx512 && std::arch::is_x86_feature_detected!("avx512bf16") }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            Kernels { avx512: false, avx512_bf16: false }
        }
    }
}

/// `a · b` over IEEE half-precision bits, summed in f32. Portable.
pub fn dot_f16_portable(a: &[u16], b: &[u16]) -> f32 {
    a.iter().zip(b).map(|(&x, &y)| half::f16::from_bits(x).to_f32() * half::f16::from_bits(y).to_f32()).sum()
}

/// `a · b` over bfloat16 bits, summed in f32. Portable.
pub fn dot_bf16_portable(a: &[u16], b: &[u16]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| half::bf16::from_bits(x).to_f32() * half::bf16::from_bits(y).to_f32())
        .sum()
}

/// `a · b` in f32. Portable.
pub fn dot_f32_portable(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(target_arch = "x86_64")]
pub use avx512::{dot_bf16, dot_f16, dot_f32};

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// A mask of the first `left` lanes (all 32 when `left` >= 32); the
    /// 16-lane loads take its low half.
    fn first_lanes(left: usize) -> u32 {
        if left >= 32 {
            u32::MAX
        } else {
            (1u32 << left) - 1
        }
    }

    /// The sum of the four accumulators' lanes.
    #[target_feature(enable = "avx512f")]
    fn sum(acc: [__m512; 4]) -> f32 {
        _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])))
    }

    /// `a · b` in f32 over `n` values.
    ///
    /// # Safety
    /// `a` and `b` must be valid for `n` reads, and the CPU must have
    /// AVX-512F, BW and VL ([`super::Kernels::avx512`]).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn dot_f32(a: *const f32, b: *const f32, n: usize) -> f32 {
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        while i + 64 <= n {
            for (j, s) in acc.iter_mut().enumerate() {
                let o = i + 16 * j;
                *s = _mm512_fmadd_ps(_mm512_loadu_ps(a.add(o)), _mm512_loadu_ps(b.add(o)), *s);
            }
            i += 64;
        }
        while i < n {
            let mask = first_lanes(n - i) as __mmask16;
            let x = _mm512_maskz_loadu_ps(mask, a.add(i));
            let y = _mm512_maskz_loadu_ps(mask, b.add(i));
            acc[0] = _mm512_fmadd_ps(x, y, acc[0]);
            i += 16;
        }
        sum(acc)
    }

    /// `a · b` over `n` IEEE half-precision values, converted to f32 and
    /// summed in f32.
    ///
    /// # Safety
    /// As [`dot_f32`], and the CPU must have F16C.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
    pub unsafe fn dot_f16(a: *const u16, b: *const u16, n: usize) -> f32 {
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        while i + 64 <= n {
            for (j, s) in acc.iter_mut().enumerate() {
                let o = i + 16 * j;
                let x = _mm512_cvtph_ps(_mm256_loadu_si256(a.add(o) as *const __m256i));
                let y = _mm512_cvtph_ps(_mm256_loadu_si256(b.add(o) as *const __m256i));
                *s = _mm512_fmadd_ps(x, y, *s);
            }
            i += 64;
        }
        while i < n {
            let mask = first_lanes(n - i) as __mmask16;
            let x = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, a.add(i) as *const i16));
            let y = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, b.add(i) as *const i16));
            acc[0] = _mm512_fmadd_ps(x, y, acc[0]);
            i += 16;
        }
        sum(acc)
    }

    /// `a · b` over `n` bfloat16 values with AVX512-BF16's pairwise
    /// multiply-add into f32.
    ///
    /// # Safety
    /// As [`dot_f32`], and the CPU must have AVX512-BF16
    /// ([`super::Kernels::avx512_bf16`]).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub unsafe fn dot_bf16(a: *const u16, b: *const u16, n: usize) -> f32 {
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        while i + 128 <= n {
            for (j, s) in acc.iter_mut().enumerate() {
                let o = i + 32 * j;
                let x: __m512bh = std::mem::transmute(_mm512_loadu_si512(a.add(o) as *const __m512i));
                let y: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(o) as *const __m512i));
                *s = _mm512_dpbf16_ps(*s, x, y);
            }
            i += 128;
        }
        while i < n {
            let mask: __mmask32 = first_lanes(n - i);
            let x: __m512bh = std::mem::transmute(_mm512_maskz_loadu_epi16(mask, a.add(i) as *const i16));
            let y: __m512bh = std::mem::transmute(_mm512_maskz_loadu_epi16(mask, b.add(i) as *const i16));
            acc[0] = _mm512_dpbf16_ps(acc[0], x, y);
            i += 32;
        }
        sum(acc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vectors(n: usize, seed: u64) -> Vec<f32> {
        // A small LCG: values in [-1, 1).
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    const LENGTHS: [usize; 12] = [0, 1, 7, 15, 16, 17, 31, 33, 64, 127, 384, 1024];

    #[test]
    fn f32_kernels_match_the_exact_sum_at_every_length() {
        // The AVX-512 kernel is checked where the CPU has it (this machine
        // and CI's do); the portable one everywhere.
        let avx512 = Kernels::detect().avx512;
        for n in LENGTHS {
            let (a, b) = (vectors(n, 1), vectors(n, 2));
            let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            let tolerance = 1e-5 * (n as f64).max(1.0);
            assert!((dot_f32_portable(&a, &b) as f64 - want).abs() < tolerance, "portable n={n}");
            if avx512 {
                let got = unsafe { dot_f32(a.as_ptr(), b.as_ptr(), n) };
                assert!((got as f64 - want).abs() < tolerance, "avx512 n={n}: {got} vs {want}");
            }
        }
    }

    #[test]
    fn half_kernels_match_the_portable_ones_at_every_length() {
        let k = Kernels::detect();
        for n in LENGTHS {
            let (a, b) = (vectors(n, 3), vectors(n, 4));
            let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            let h = |v: &[f32]| v.iter().map(|x| half::f16::from_f32(*x).to_bits()).collect::<Vec<u16>>();
            let bf = |v: &[f32]| v.iter().map(|x| half::bf16::from_f32(*x).to_bits()).collect::<Vec<u16>>();
            let (ha, hb, ba, bb) = (h(&a), h(&b), bf(&a), bf(&b));
            // Rounding to 11 (f16) or 8 (bf16) significant bits moves each
            // product by at most about 2^-10 or 2^-7 of its size.
            let portable_f16 = dot_f16_portable(&ha, &hb);
            let portable_bf16 = dot_bf16_portable(&ba, &bb);
            assert!((portable_f16 as f64 - want).abs() < 2e-3 * n as f64 + 1e-6, "f16 n={n}");
            assert!((portable_bf16 as f64 - want).abs() < 2e-2 * n as f64 + 1e-6, "bf16 n={n}");
            if k.avx512 {
                let got = unsafe { dot_f16(ha.as_ptr(), hb.as_ptr(), n) };
                assert!((got - portable_f16).abs() < 1e-4 * (n as f32).sqrt().max(1.0), "f16 n={n}: {got}");
            }
            if k.avx512_bf16 {
                let got = unsafe { dot_bf16(ba.as_ptr(), bb.as_ptr(), n) };
                assert!((got - portable_bf16).abs() < 1e-4 * (n as f32).sqrt().max(1.0), "bf16 n={n}: {got}");
            }
        }
    }
}
