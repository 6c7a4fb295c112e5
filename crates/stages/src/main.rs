//! The `baton-stages` binary: everything it does lives in the `baton_stages` library crate.

fn main() -> std::process::ExitCode {
    baton_stages::main()
}
