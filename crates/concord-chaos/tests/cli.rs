//! The `concord-chaos` binary refuses bad arguments before it starts anything: a clear
//! message, exit code 2 (neither a verdict of VALID nor of INVALID), and its result line.
//! (Building this test also makes `cargo test --release` build the binary that
//! `scripts/chaos.sh` runs, with the features the other tests' binaries are built with.)

use std::process::Command;

fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_concord-chaos"))
        .args(args)
        .output()
        .expect("concord-chaos runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_arguments_are_refused_before_any_node_starts() {
    let out = std::env::temp_dir().join(format!("concord-chaos-cli-{}", std::process::id()));
    let out = out.to_str().expect("a UTF-8 temp path");
    let cases: [(&[&str], &str); 3] = [
        (&["--nodes", "0"], "--nodes must be between 1 and 9"),
        (
            &["--local", "--nemesis", "bogus"],
            "unknown nemesis \"bogus\"",
        ),
        (
            &[
                "--local",
                "--nemesis",
                "kill",
                "--concord-bin",
                "/nonexistent/concord",
            ],
            "/nonexistent/concord",
        ),
    ];
    for (extra, message) in cases {
        let mut args = vec!["run", "--workload", "register", "--out", out];
        args.extend_from_slice(extra);
        let (code, stdout, stderr) = run(&args);
        assert_eq!(code, Some(2), "{extra:?}: {stderr}");
        assert!(stderr.contains(message), "{extra:?}: {stderr}");
        assert!(stdout.contains("verdict=UNKNOWN"), "{extra:?}: {stdout}");
    }
    // An unknown workload is clap's usage error (also exit code 2).
    let (code, _, stderr) = run(&["run", "--workload", "nonsense"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("nonsense"), "{stderr}");
    let _ = std::fs::remove_dir_all(out);
}
