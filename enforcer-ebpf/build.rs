//! Rebuilds the kernel object when the `bpf-linker` on PATH changes.
//!
//! Building this crate depends on the `bpf-linker` binary, which cargo cannot express as a
//! dependency; keying the build on the linker's mtime is the closest approximation.

fn main() {
    match which::which("bpf-linker") {
        Ok(linker) => println!("cargo::rerun-if-changed={}", linker.display()),
        Err(err) => println!(
            "cargo::warning=bpf-linker not found on PATH ({err}); run `cargo xtask setup` first"
        ),
    }
}
