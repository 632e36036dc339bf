//! `concord-check`: checks a chaos-run history and prints the verdict as JSON.
//!
//! Exit status: 0 valid, 1 invalid, 2 unknown or error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use concord_check::{check_file_with, CheckOptions, Validity, Workload};

#[derive(Parser, Debug)]
#[command(
    name = "concord-check",
    version,
    about = "Check a Concord chaos history (JSONL)"
)]
struct Args {
    /// Workload: register, bank, set, lock, watch, reads, ap-set, ap-counter or ap-orset.
    workload: String,
    /// Path to the history (one JSON event per line).
    history: PathBuf,
    /// Time budget for the linearizability search, in seconds.
    #[arg(long, default_value_t = 60)]
    budget_secs: u64,
    /// Maximum number of search states per key before giving up with "unknown".
    #[arg(long, default_value_t = 5_000_000)]
    max_states: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let workload: Workload = match args.workload.parse() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("concord-check: {e}");
            return ExitCode::from(2);
        }
    };
    let options = CheckOptions {
        budget: Duration::from_secs(args.budget_secs),
        max_states: args.max_states,
        ..CheckOptions::default()
    };
    match check_file_with(workload, &args.history, &options) {
        Ok(verdict) => {
            match serde_json::to_string_pretty(&verdict) {
                Ok(s) => println!("{s}"),
                Err(e) => {
                    eprintln!("concord-check: cannot print verdict: {e}");
                    return ExitCode::from(2);
                }
            }
            match verdict.valid {
                Validity::Valid => ExitCode::SUCCESS,
                Validity::Invalid => ExitCode::from(1),
                Validity::Unknown => ExitCode::from(2),
            }
        }
        Err(e) => {
            eprintln!("concord-check: {e}");
            ExitCode::from(2)
        }
    }
}
