//! What parsing in a child process costs per file: each committed fixture
//! parsed N times in-process and N times through the worker, mean per file.
//!
//! ```sh
//! cargo build --release -p datafactory-parse --bins --examples
//! target/release/examples/parse_overhead target/release/datafactory-parse-worker 50
//! ```

use std::path::{Path, PathBuf};
use std::time::Instant;

use datafactory_parse::worker::WorkerCommand;
use datafactory_parse::{parse, Isolation, ParseOptions};

fn main() {
    let mut args = std::env::args().skip(1);
    let worker = PathBuf::from(args.next().expect("usage: parse_overhead WORKER [N]"));
    let n: u32 = args.next().map_or(50, |a| a.parse().expect("N"));
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    let in_process = ParseOptions { isolation: Isolation::None, ..ParseOptions::default() };
    let child = ParseOptions {
        isolation: Isolation::All,
        worker: Some(WorkerCommand { program: worker, args: Vec::new() }),
        ..ParseOptions::default()
    };
    println!("{:14} {:>9} {:>14} {:>14} {:>12}", "file", "bytes", "in-process ms", "child ms", "overhead ms");
    for name in ["sample.txt", "sample.md", "sample.html", "sample.pdf", "sample.docx", "sample.jsonl"] {
        let path = fixtures.join(name);
        let bytes = std::fs::read(&path).unwrap();
        let time = |opts: &ParseOptions| {
            let started = Instant::now();
            for _ in 0..n {
                parse(&bytes, Some(&path), opts).unwrap();
            }
            started.elapsed().as_secs_f64() * 1000.0 / f64::from(n)
        };
        let (a, b) = (time(&in_process), time(&child));
        println!("{name:14} {:>9} {a:>14.2} {b:>14.2} {:>12.2}", bytes.len(), b - a);
    }
}
