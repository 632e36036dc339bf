//! `concord top`: the dashboard's numbers in a terminal, refreshed every interval. It reads
//! `/v1/dashboard` from the first endpoint that answers (every member's `/metrics`, as the
//! member fetched them) and computes, per member, role, term, indexes, size and keys, and
//! for the cluster the gRPC request rate and the unary p50/p99 latency over the interval.

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::Value;

use super::{out, printer, CtlError, CtlResult, GlobalArgs};

/// `concord top`.
#[derive(Args, Debug)]
pub struct TopArgs {
    #[command(flatten)]
    /// Global flags.
    pub global: GlobalArgs,
    /// Time between two refreshes
    #[arg(long, default_value = "1s", value_parser = super::duration::parse)]
    pub interval: Duration,
    /// Stop after this many refreshes (0: until Ctrl-C)
    #[arg(long, default_value_t = 0)]
    pub iterations: u64,
}

/// One member's series: `name{labels}` → value.
type Series = Vec<(String, BTreeMap<String, String>, f64)>;

/// The samples of a Prometheus text page (comment lines skipped; a line that does not
/// parse is skipped too: this is a display, not a check).
fn parse(text: &str) -> Series {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (head, value) = match line.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match head.split_once('{') {
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').unwrap_or(rest);
                let labels = body
                    .split("\",")
                    .filter_map(|kv| {
                        let (k, v) = kv.split_once("=\"")?;
                        Some((k.to_string(), v.trim_end_matches('"').to_string()))
                    })
                    .collect();
                (name.to_string(), labels)
            }
            None => (head.to_string(), BTreeMap::new()),
        };
        out.push((name, labels, value));
    }
    out
}

fn one(s: &Series, name: &str) -> Option<f64> {
    s.iter().find(|(n, _, _)| n == name).map(|(_, _, v)| *v)
}

fn total(s: &Series, name: &str) -> f64 {
    s.iter()
        .filter(|(n, _, _)| n == name)
        .map(|(_, _, v)| v)
        .sum()
}

/// Cumulative counts of the unary gRPC handling histogram, by upper bound (summed over
/// methods), as (bound bits, count) so it can be a map key.
fn unary_buckets(s: &Series) -> BTreeMap<u64, f64> {
    let mut out = BTreeMap::new();
    for (n, l, v) in s {
        if n == "grpc_server_handling_seconds_bucket"
            && l.get("grpc_type").map(String::as_str) == Some("unary")
        {
            let le = match l.get("le").map(String::as_str) {
                Some("+Inf") => f64::INFINITY,
                Some(x) => x.parse().unwrap_or(f64::INFINITY),
                None => continue,
            };
            *out.entry(le.to_bits()).or_insert(0.0) += v;
        }
    }
    out
}

/// The q-quantile of cumulative bucket counts, interpolated as `histogram_quantile` does.
fn quantile(q: f64, counts: &BTreeMap<u64, f64>) -> Option<f64> {
    let mut b: Vec<(f64, f64)> = counts
        .iter()
        .map(|(k, v)| (f64::from_bits(*k), *v))
        .collect();
    b.sort_by(|x, y| x.0.total_cmp(&y.0));
    let n = b.last()?.1;
    if n <= 0.0 {
        return None;
    }
    let rank = q * n;
    let (mut lo, mut below) = (0.0, 0.0);
    for (le, c) in b {
        if c >= rank {
            if le.is_infinite() {
                return Some(lo);
            }
            return Some(lo + (le - lo) * ((rank - below) / (c - below).max(1e-9)));
        }
        (lo, below) = (le, c);
    }
    Some(lo)
}

/// What one refresh keeps for the next: per member id, the handled total and buckets.
#[derive(Default)]
struct Previous {
    at: Option<Instant>,
    handled: BTreeMap<String, f64>,
    buckets: BTreeMap<String, BTreeMap<u64, f64>>,
}

fn bytes(n: f64) -> String {
    if n < 1024.0 * 1024.0 {
        format!("{:.1} KiB", n / 1024.0)
    } else {
        format!("{:.1} MiB", n / 1048576.0)
    }
}

/// One screen from a `/v1/dashboard` answer.
fn screen(dash: &Value, prev: &mut Previous, now: Instant) -> CtlResult<String> {
    let members = dash["members"]
        .as_array()
        .ok_or_else(|| CtlError::new("unexpected answer from /v1/dashboard"))?;
    let mut rows = Vec::new();
    let mut rate = 0.0;
    let mut window: BTreeMap<u64, f64> = BTreeMap::new();
    let dt = prev.at.map(|t| now.duration_since(t).as_secs_f64());
    let mut handled_now = BTreeMap::new();
    let mut buckets_now = BTreeMap::new();
    let mut leader = String::from("none");
    for m in members {
        let id = m["id"].as_str().unwrap_or_default().to_string();
        let name = m["name"]
            .as_str()
            .filter(|n| !n.is_empty())
            .unwrap_or(&id)
            .to_string();
        let up = m["up"].as_bool().unwrap_or(false);
        let Some(text) = m["metrics"].as_str().filter(|_| up) else {
            rows.push(vec![
                name,
                "down".into(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ]);
            continue;
        };
        let s = parse(text);
        let is_leader = one(&s, "etcd_server_is_leader") == Some(1.0);
        if is_leader {
            leader = name.clone();
        }
        let role = match m["kind"].as_str() {
            Some("ap-only") => "ap-only",
            Some("learner") => "learner",
            _ if is_leader => "leader",
            _ => "follower",
        };
        let handled = total(&s, "grpc_server_handled_total");
        let buckets = unary_buckets(&s);
        if let (Some(dt), Some(before)) = (dt, prev.handled.get(&id)) {
            if dt > 0.0 && handled >= *before {
                rate += (handled - before) / dt;
            }
            let old = prev.buckets.get(&id).cloned().unwrap_or_default();
            for (le, c) in &buckets {
                *window.entry(*le).or_insert(0.0) += (c - old.get(le).unwrap_or(&0.0)).max(0.0);
            }
        }
        handled_now.insert(id.clone(), handled);
        buckets_now.insert(id, buckets);
        let cell = |n: &str| one(&s, n).map_or(String::new(), |v| format!("{v:.0}"));
        rows.push(vec![
            name,
            "up".into(),
            role.into(),
            cell("concord_raft_term"),
            cell("concord_raft_commit_index"),
            cell("concord_raft_applied_index"),
            one(&s, "etcd_mvcc_db_total_size_in_bytes").map_or(String::new(), bytes),
            cell("etcd_debugging_mvcc_keys_total"),
        ]);
    }
    prev.at = Some(now);
    prev.handled = handled_now;
    prev.buckets = buckets_now;
    let ms = |q| quantile(q, &window).map_or("-".to_string(), |v| format!("{:.2}", v * 1000.0));
    let mut text = format!(
        "leader: {leader}   gRPC requests/s: {}   unary latency ms p50 {} p99 {}\n",
        if dt.is_some() {
            format!("{rate:.0}")
        } else {
            "-".into()
        },
        ms(0.5),
        ms(0.99)
    );
    text.push_str(&printer::table(
        &[
            "Member", "Status", "Role", "Term", "Commit", "Applied", "DB size", "Keys",
        ],
        &rows,
    ));
    Ok(text)
}

/// Runs `concord top`.
pub async fn run(args: TopArgs) -> CtlResult<()> {
    let clear = std::io::stdout().is_terminal();
    let mut prev = Previous::default();
    let mut done = 0u64;
    loop {
        let mut answer = Err(CtlError::new("no endpoint given"));
        for endpoint in &args.global.endpoints {
            answer =
                super::http::get_json(endpoint, "/v1/dashboard", args.global.command_timeout).await;
            if answer.is_ok() {
                break;
            }
        }
        let now = Instant::now();
        let text = screen(&answer?, &mut prev, now)?;
        out(&if clear {
            format!("\x1b[2J\x1b[H{text}")
        } else {
            format!("{text}\n")
        });
        done += 1;
        if args.iterations != 0 && done >= args.iterations {
            return Ok(());
        }
        tokio::time::sleep(args.interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_parse_and_quantiles_interpolate() {
        let s = parse("# TYPE x counter\nx_total 3\ny{a=\"1\",b=\"two words\"} 2.5\nbroken\n");
        assert_eq!(one(&s, "x_total"), Some(3.0));
        assert_eq!(s[1].1["b"], "two words");
        assert_eq!(s.len(), 2);
        let counts: BTreeMap<u64, f64> = [(0.01f64, 50.0), (0.1, 100.0), (f64::INFINITY, 100.0)]
            .into_iter()
            .map(|(le, c)| (le.to_bits(), c))
            .collect();
        assert!((quantile(0.5, &counts).unwrap() - 0.01).abs() < 1e-12);
        assert!((quantile(0.75, &counts).unwrap() - 0.055).abs() < 1e-12);
        assert_eq!(quantile(0.5, &BTreeMap::new()), None);
    }
}
