//! The `concord-check` binary: output and exit codes.

use std::path::PathBuf;
use std::process::Command;

use concord_check::history::write_history;
use concord_check::synth::{corrupt_read_never_written, register_history, SynthConfig};

/// A temporary file removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, contents: &[u8]) -> Self {
        let path =
            std::env::temp_dir().join(format!("concord-check-{}-{name}.jsonl", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn run(args: &[&str], file: &TempFile) -> (i32, serde_json::Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_concord-check"))
        .args(args)
        .arg(&file.0)
        .output()
        .unwrap();
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (
        out.status.code().unwrap_or(-1),
        json,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn exit_codes_follow_the_verdict() {
    let mut events = register_history(&SynthConfig::default());
    let mut buf = Vec::new();
    write_history(&mut buf, &events).unwrap();
    let good = TempFile::new("good", &buf);
    let (code, json, _) = run(&["register"], &good);
    assert_eq!(code, 0);
    assert_eq!(json["valid"], serde_json::Value::Bool(true));
    assert_eq!(json["checker"], "register-linearizability");

    corrupt_read_never_written(&mut events, 3).unwrap();
    let mut buf = Vec::new();
    write_history(&mut buf, &events).unwrap();
    let bad = TempFile::new("bad", &buf);
    let (code, json, _) = run(&["register", "--budget-secs", "30"], &bad);
    assert_eq!(code, 1);
    assert_eq!(json["valid"], serde_json::Value::Bool(false));
    assert!(json["counterexample"]
        .as_array()
        .is_some_and(|w| !w.is_empty()));

    let (code, json, _) = run(&["bank"], &good);
    assert_eq!(code, 2, "no setup event: unknown");
    assert_eq!(json["valid"], "unknown");
}

#[test]
fn malformed_input_exits_2_with_line_number() {
    let file = TempFile::new(
        "malformed",
        b"{\"index\":0,\"time_ns\":1,\"process\":1,\"type\":\"invoke\",\"f\":\"read\",\"key\":\"x\"}\nnot json\n",
    );
    let (code, _, stderr) = run(&["register"], &file);
    assert_eq!(code, 2);
    assert!(stderr.contains("line 2"), "{stderr}");
    let (code, _, stderr) = run(&["queue"], &file);
    assert_eq!(code, 2);
    assert!(stderr.contains("unknown workload"), "{stderr}");
}
