//! With the `cuda` feature, compiles our CUDA kernels (kernels/encoder.cu) to
//! PTX with the toolkit's nvcc (found through CUDA_HOME, CUDA_PATH or PATH, as
//! cudaforge does for candle's own kernels) and writes `$OUT_DIR/ptx.rs`,
//! which `src/cuda_kernels.rs` embeds. Without the feature it does nothing,
//! so the default build needs no CUDA toolkit.

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    #[cfg(feature = "cuda")]
    cuda::build();
}

#[cfg(feature = "cuda")]
mod cuda {
    use std::path::PathBuf;

    pub fn build() {
        println!("cargo::rerun-if-changed=kernels");
        let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
        // compute_80 PTX: the driver compiles it for any GPU from Ampere on
        // (A100, H100, H200, ...), whatever CUDA_COMPUTE_CAP candle's kernels
        // are built for; bf16 needs sm_80.
        let ptx = cudaforge::KernelBuilder::new()
            .source_files(["kernels/encoder.cu"])
            .compute_cap_arch("80")
            .arg("-std=c++17")
            .arg("-O3")
            .build_ptx()
            .unwrap_or_else(|e| panic!("compiling kernels/encoder.cu to PTX: {e}"));
        ptx.write(out.join("ptx.rs")).unwrap_or_else(|e| panic!("writing ptx.rs: {e}"));
    }
}
