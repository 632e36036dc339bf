//! End to end: a real one-node `concord server`, driven by the `concord` binary's
//! etcdctl-style client commands, checking their exact output.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{free_port, Cluster, BIN};

/// A running one-node cluster (the test kit's process harness), killed by PID on drop.
struct Server {
    cluster: Cluster,
    _rt: tokio::runtime::Runtime,
}

impl Server {
    fn start() -> Server {
        let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
        let cluster = rt.block_on(Cluster::start(BIN, 1));
        Server { cluster, _rt: rt }
    }

    /// The endpoint as users type it: host:port without the scheme.
    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.cluster.nodes[0].client_port)
    }

    fn ctl_stdin(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = Command::new(BIN)
            .args(args)
            .args(["--endpoints", &self.endpoint()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run concord");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("write stdin");
        child.wait_with_output().expect("concord output")
    }

    fn ctl(&self, args: &[&str]) -> Output {
        self.ctl_stdin(args, "")
    }

    /// Runs a command that must succeed and returns its standard output.
    fn ok(&self, args: &[&str]) -> String {
        self.ok_stdin(args, "")
    }

    fn ok_stdin(&self, args: &[&str], stdin: &str) -> String {
        let out = self.ctl_stdin(args, stdin);
        assert!(
            out.status.success(),
            "concord {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("bad JSON {text:?}: {e}"))
}

#[test]
fn client_commands_against_a_real_server() {
    let s = Server::start();

    // put / get / del.
    assert_eq!(s.ok(&["put", "foo", "bar"]), "OK\n");
    assert_eq!(s.ok(&["get", "foo"]), "foo\nbar\n");
    assert_eq!(s.ok_stdin(&["put", "foo2"], "from stdin"), "OK\n");
    assert_eq!(
        s.ok(&["get", "foo", "--prefix"]),
        "foo\nbar\nfoo2\nfrom stdin\n"
    );
    assert_eq!(
        s.ok(&["get", "foo", "--prefix", "--keys-only"]),
        "foo\n\nfoo2\n\n"
    );
    assert_eq!(
        s.ok(&[
            "get",
            "foo",
            "--prefix",
            "--print-value-only",
            "--limit",
            "1"
        ]),
        "bar\n"
    );
    assert_eq!(
        s.ok(&[
            "get",
            "foo",
            "--prefix",
            "--sort-by",
            "key",
            "--order",
            "descend"
        ]),
        "foo2\nfrom stdin\nfoo\nbar\n"
    );
    let j = json(&s.ok(&["get", "foo", "-w", "json"]));
    assert_eq!(j["kvs"][0]["key"], "Zm9v");
    assert_eq!(j["kvs"][0]["value"], "YmFy");
    assert_eq!(j["count"], 1);
    assert!(j["header"]["revision"].as_i64().unwrap_or(0) >= 3, "{j}");
    assert!(j["header"]["cluster_id"].as_u64().unwrap_or(0) > 0, "{j}");
    let fields = s.ok(&["get", "foo", "--prefix", "--count-only", "-w", "fields"]);
    assert!(fields.ends_with("\"Count\" : 2\n"), "{fields}");
    assert_eq!(s.ok(&["del", "foo2"]), "1\n");
    assert_eq!(s.ok(&["del", "nothing"]), "0\n");
    assert_eq!(s.ok(&["put", "foo", "bar", "--prev-kv"]), "OK\nfoo\nbar\n");

    // txn from stdin, both branches.
    let txn = "value(\"foo\") = \"bar\"\n\nput foo new\nget foo\n\nput foo other\n\n";
    assert_eq!(s.ok_stdin(&["txn"], txn), "SUCCESS\n\nOK\n\nfoo\nnew\n");
    assert_eq!(s.ok_stdin(&["txn"], txn), "FAILURE\n\nOK\n");
    assert_eq!(s.ok(&["get", "foo", "--print-value-only"]), "other\n");
    assert_eq!(
        s.ok_stdin(&["txn", "-i"], "mod(\"foo\") > \"0\"\n\ndel foo\n\n\n"),
        "compares:\nsuccess requests (get, put, del):\nfailure requests (get, put, del):\nSUCCESS\n\n1\n"
    );
    let bad = s.ctl_stdin(&["txn"], "value(foo) = \"x\"\n\n\n\n");
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).starts_with("Error: malformed comparison"));

    // Leases.
    let granted = s.ok(&["lease", "grant", "60"]);
    let id = granted
        .strip_prefix("lease ")
        .and_then(|r| r.strip_suffix(" granted with TTL(60s)\n"))
        .unwrap_or_else(|| panic!("unexpected grant output {granted:?}"))
        .to_string();
    assert_eq!(id.len(), 16, "{id}");
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
    assert_eq!(s.ok(&["put", "lk", "v", "--lease", &id]), "OK\n");
    let ttl = s.ok(&["lease", "timetolive", &id, "--keys"]);
    assert!(
        ttl.starts_with(&format!("lease {id} granted with TTL(60s), remaining(")),
        "{ttl}"
    );
    assert!(ttl.ends_with("s), attached keys([lk])\n"), "{ttl}");
    assert!(s.ok(&["lease", "list"]).contains(&format!("\n{id}\n")));
    assert_eq!(
        s.ok(&["lease", "keep-alive", &id, "--once"]),
        format!("lease {id} keepalived with TTL(60)\n")
    );
    assert_eq!(
        s.ok(&["lease", "revoke", &id]),
        format!("lease {id} revoked\n")
    );
    assert_eq!(s.ok(&["get", "lk"]), "");
    let gone = s.ctl(&["lease", "revoke", &id]);
    assert_eq!(gone.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&gone.stderr),
        "Error: etcdserver: requested lease not found\n"
    );

    // Members and endpoints.
    let node = &s.cluster.nodes[0];
    let list = s.ok(&["member", "list"]);
    let fields: Vec<&str> = list.trim_end().split(", ").collect();
    assert_eq!(fields.len(), 6, "{list}");
    assert!(u64::from_str_radix(fields[0], 16).is_ok(), "{list}");
    assert_eq!(
        &fields[1..],
        &[
            "started",
            "n0",
            &node.peer_url(),
            &node.client_url(),
            "false"
        ],
        "{list}"
    );
    let table = s.ok(&["member", "list", "-w", "table"]);
    assert!(table.contains("| IS LEARNER |"), "{table}");
    assert!(
        table.contains(&format!("| {} |", node.client_url())),
        "{table}"
    );
    let status = s.ok(&["endpoint", "status"]);
    assert!(
        status.starts_with(&format!("{}, {}, ", s.endpoint(), fields[0])),
        "{status}"
    );
    assert!(status.contains(", true, false, "), "{status}");
    let status = s.ok(&["endpoint", "status", "-w", "table"]);
    assert!(
        status.contains(" ENDPOINT ") && status.contains("| RAFT APPLIED INDEX | ERRORS |"),
        "{status}"
    );
    let health = s.ok(&["endpoint", "health"]);
    assert!(
        health.starts_with(&format!(
            "{} is healthy: successfully committed proposal: took = ",
            s.endpoint()
        )),
        "{health}"
    );

    // Snapshots.
    let rev = json(&s.ok(&["get", "x", "-w", "json"]))["header"]["revision"]
        .as_i64()
        .expect("revision");
    let file = s.cluster.dir().join("snap.db");
    let file_arg = file.to_str().expect("utf-8 path");
    assert_eq!(
        s.ok(&["snapshot", "save", file_arg]),
        format!("Snapshot saved at {file_arg}\n")
    );
    assert!(file.exists());
    assert!(!Path::new(&format!("{file_arg}.part")).exists());
    let st = s.ok(&["snapshot", "status", file_arg]);
    let cols: Vec<&str> = st.trim_end().split(", ").collect();
    assert_eq!(cols.len(), 4, "{st}");
    assert!(u32::from_str_radix(cols[0], 16).is_ok(), "{st}");
    assert_eq!(cols[1], rev.to_string(), "{st}");
    let restored = s.cluster.dir().join("restored");
    let out = s.ok(&[
        "snapshot",
        "restore",
        file_arg,
        "--data-dir",
        restored.to_str().expect("utf-8 path"),
    ]);
    assert!(out.contains("--initial-cluster-state new"), "{out}");
    assert!(restored.exists());

    // Compaction.
    assert_eq!(s.ok(&["compaction", "2"]), "compacted revision 2\n");
    let old = s.ctl(&["get", "foo", "--rev", "1"]);
    assert_eq!(old.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&old.stderr)
        .starts_with("Error: etcdserver: mvcc: required revision has been compacted"));
}

#[test]
fn global_flags_come_from_etcdctl_environment_variables() {
    let server = Server::start();
    server.ok(&["put", "env-key", "env-value"]);
    let run = |extra: &[&str]| {
        Command::new(BIN)
            .args(["get", "env-key"])
            .args(extra)
            .env("ETCDCTL_ENDPOINTS", server.endpoint())
            .env("ETCDCTL_WRITE_OUT", "json")
            .env("ETCDCTL_COMMAND_TIMEOUT", "3s")
            .output()
            .expect("run concord")
    };
    // No --endpoints: the environment names the server; the output is JSON.
    let out = run(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(v["count"], 1);
    // A flag wins over the environment.
    let out = run(&["-w", "simple"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "env-key\nenv-value\n");
    // --hex (or ETCDCTL_HEX): every byte as \xNN, as etcdctl prints it.
    let hex = |t: &str| t.bytes().map(|b| format!("\\x{b:02x}")).collect::<String>();
    assert_eq!(
        server.ok(&["get", "env-key", "--hex"]),
        format!("{}\n{}\n", hex("env-key"), hex("env-value"))
    );
    assert!(hex("env-key").starts_with("\\x65\\x6e\\x76"));
    // A bad value in the environment is a usage error naming it, like a bad flag.
    let out = Command::new(BIN)
        .args(["get", "env-key", "--endpoints", &server.endpoint()])
        .env("ETCDCTL_DIAL_TIMEOUT", "2")
        .output()
        .expect("run concord");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("dial-timeout"));
}

#[test]
fn errors_are_one_line_and_exit_1() {
    let port = free_port();
    let out = Command::new(BIN)
        .args(["get", "foo", "--dial-timeout", "300ms"])
        .args(["--endpoints", &format!("127.0.0.1:{port}")])
        .output()
        .expect("run concord");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("Error: context deadline exceeded"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(out.stdout.is_empty());

    let out = Command::new(BIN)
        .args(["lease", "timetolive", "not-hex"])
        .args(["--endpoints", &format!("127.0.0.1:{port}")])
        .output()
        .expect("run concord");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "Error: bad lease ID arg (not-hex), expecting ID in Hex\n"
    );
}

#[test]
fn shell_completions_cover_the_client_commands() {
    for (shell, marker) in [
        ("bash", "_concord()"),
        ("zsh", "#compdef concord"),
        ("fish", "complete -c concord"),
    ] {
        let out = Command::new(BIN)
            .args(["completion", shell])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{shell}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(script.contains(marker), "{shell} script lacks {marker}");
        for sub in [
            "get", "put", "txn", "watch", "lease", "lock", "elect", "member", "snapshot",
        ] {
            assert!(script.contains(sub), "{shell} script lacks {sub}");
        }
    }
    let out = Command::new(BIN)
        .args(["completion", "tcsh"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// `concord bench` finishes every operation it offers, with no error, whether its clients
/// share one thread or several (each thread owns its connections), and with watchers.
#[test]
fn bench_runs_every_operation_on_one_or_more_threads() {
    let server = Server::start();
    let runs: &[&[&str]] = &[
        &["--op", "put", "--threads", "1"],
        &["--op", "put", "--threads", "2", "--watchers", "20"],
        &["--op", "range", "--threads", "3"],
        &["--op", "range-serializable"],
        &["--op", "txn-cas", "--threads", "2"],
        &["--op", "watch-latency", "--threads", "2"],
        &["--op", "lease-keepalive", "--threads", "2"],
    ];
    for extra in runs {
        let mut args = vec![
            "bench",
            "--clients",
            "8",
            "--conns",
            "3",
            "--total",
            "300",
            "--duration",
            "60",
            "--key-space",
            "50",
            "--no-progress",
        ];
        args.extend_from_slice(extra);
        let out = server.ok(&args);
        let summary = json(out.lines().last().expect("a JSON line"));
        assert_eq!(summary["ok"], 300, "{extra:?}: {out}");
        assert_eq!(summary["errors"], 0, "{extra:?}: {out}");
    }
}
