//! The `baton` binary: everything it does lives in the `baton` library crate.

fn main() -> std::process::ExitCode {
    baton::main()
}
