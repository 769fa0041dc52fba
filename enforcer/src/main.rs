//! The `enforcer` command.

fn main() -> std::process::ExitCode {
    enforcer::cli::main()
}

/// mimalloc: policy compilation of large policies is allocation-bound (the TOML parser
/// allocates per token), and glibc malloc made it about a third slower.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
