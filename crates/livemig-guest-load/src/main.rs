//! `livemig-guest-load SPEC | --cmdline FILE`: the test guest's workload (see the crate docs).

use std::process::ExitCode;

use livemig_guest_load::{run::run, LoadSpec};

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
            eprintln!("livemig-guest-load: {e}");
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
