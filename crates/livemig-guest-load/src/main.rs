//! `livemig-guest-load SPEC | --cmdline FILE`: the test guest's workload (see the crate docs).

use std::process::ExitCode;

use livemig_guest_load::{run::run, LoadSpec};

/// An error with its whole source chain.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let spec = match args.as_slice() {
        [flag, file] if flag == "--cmdline" => match std::fs::read_to_string(file) {
            Ok(text) => LoadSpec::from_cmdline(&text),
            Err(e) => {
                eprintln!("livemig-guest-load: cannot read {file}: {e}");
                return ExitCode::from(2);
            }
        },
        [spec] => LoadSpec::parse(spec),
        _ => {
            eprintln!("usage: livemig-guest-load PATTERN:rate=R,buffer=B,... | --cmdline FILE");
            return ExitCode::from(2);
        }
    };
    let spec = match spec {
        Ok(s) => s,
        Err(e) => {
            eprintln!("livemig-guest-load: {}", chain(&e));
            return ExitCode::from(2);
        }
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match run(&spec, &mut out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("livemig-guest-load: {e}");
            ExitCode::from(1)
        }
    }
}
