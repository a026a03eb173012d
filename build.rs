//! Build script. CUDA kernels in `kernels/*.cu` are embedded here once the CUDA backend exists;
//! for now it only asks cargo to re-run when the kernels folder changes.
fn main() {
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-changed=build.rs");
}
