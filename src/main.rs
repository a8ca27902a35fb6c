//! The `ringpost` binary: everything lives in the library; this only hands
//! the command line to [`ringpost::cli`] and turns its error into an exit code.

fn main() -> std::process::ExitCode {
    ringpost::cli::main()
}
