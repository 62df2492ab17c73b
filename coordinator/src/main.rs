//! The `parhelia` binary: everything lives in the library (`parhelia::cli`).

fn main() {
    std::process::exit(parhelia::cli::main());
}
