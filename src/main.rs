//! The `ringpost` binary: everything lives in the library; this only hands
//! the command line to [`ringpost::cli`] and turns its error into an exit code.
//!
//! It also picks the memory allocator: jemalloc, whose size classes keep a
//! long-running queue's memory from fragmenting. With the system allocator
//! (glibc), filling a queue of half a million messages left 400 MB of the
//! process's memory free but held between long-lived envelopes (see
//! docs/performance.md, "Memory").

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    ringpost::cli::main()
}
