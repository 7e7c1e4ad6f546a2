//! The parse child process (see `datafactory_parse::worker`): a request and a
//! file on standard input, the parsed documents as JSON on standard output.
//! Production runs the same code as `datafactory parse-worker`.

fn main() -> std::process::ExitCode {
    datafactory_parse::worker::main()
}
