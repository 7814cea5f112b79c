//! Prints what a fuzz input (a crash artifact, a corpus entry) decodes to, for triage:
//! `cargo run --example decode -- <mmio|balloon|gcma> <file>`.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(target), Some(path)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: decode <mmio|balloon|gcma> <file>");
        std::process::exit(2);
    };
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("decode: cannot read {path}: {e}");
            std::process::exit(1);
        }
    };
    match target.as_str() {
        "mmio" => println!("{:#?}", balloon_fuzz::mmio::decode(&data)),
        "balloon" => println!("{:#?}", balloon_fuzz::balloon::decode(&data)),
        "gcma" => println!("{:#?}", balloon_fuzz::gcma::decode(&data)),
        other => {
            eprintln!("decode: unknown target {other} (mmio, balloon or gcma)");
            std::process::exit(2);
        }
    }
}
