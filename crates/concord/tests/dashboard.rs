//! The dashboard at `/ui`, in a real browser: headless Chromium loads the page of a
//! 3-member cluster, waits for live data, finds the leader's name, and sees a killed
//! member marked down. Screenshots go to `target/dashboard-*.png` (CI keeps them).
//!
//! Chromium is taken from `CONCORD_CHROMIUM` or `/usr/bin/chromium`. Without it the test
//! says so and passes, unless `CONCORD_REQUIRE_BROWSER=1` (as `.ci/run` sets after
//! installing Debian's `chromium`), when a missing browser fails it.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Cluster, BIN};

fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("CONCORD_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if path.exists() {
        return Some(path);
    }
    assert!(
        std::env::var_os("CONCORD_REQUIRE_BROWSER").is_none_or(|v| v != "1"),
        "CONCORD_REQUIRE_BROWSER=1 but there is no browser at {}",
        path.display()
    );
    eprintln!(
        "no Chromium at {}: the browser test is skipped",
        path.display()
    );
    None
}

/// Loads `url` in headless Chromium, lets the page run `budget` of (virtual) time, and
/// returns the DOM; saves a screenshot to `shot` too.
fn load(browser: &PathBuf, url: &str, budget: Duration, shot: &PathBuf) -> String {
    let profile = tempfile::tempdir().expect("a profile directory");
    let common_args = |cmd: &mut Command| {
        cmd.args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--window-size=1280,1000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--virtual-time-budget={}", budget.as_millis()));
    };
    let mut dump = Command::new(browser);
    common_args(&mut dump);
    let out = dump
        .arg("--dump-dom")
        .arg(url)
        .output()
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium --dump-dom {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut screenshot = Command::new(browser);
    common_args(&mut screenshot);
    let taken = screenshot
        .arg(format!("--screenshot={}", shot.display()))
        .arg(url)
        .output()
        .expect("chromium runs");
    assert!(
        taken.status.success() && shot.exists(),
        "no screenshot at {shot:?}"
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `<tr>` start tag of member `name` in the members table.
fn row<'a>(dom: &'a str, name: &str) -> Option<&'a str> {
    let start = dom.find(&format!("<tr data-member=\"{name}\""))?;
    let end = dom[start..].find('>')?;
    Some(&dom[start..start + end])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_leader_and_a_member_that_stops() {
    let Some(browser) = chromium() else {
        return;
    };
    let mut cluster = Cluster::start(BIN, 3).await;
    let leader = cluster.leader().await;
    let mut client = cluster.client(leader).await;
    for i in 0..20 {
        client.put(format!("k{i}"), "v", None).await.expect("put");
    }
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("..");
    let url = format!("{}/ui", cluster.url(leader));
    let leader_name = cluster.nodes[leader].name.clone();

    let dom = load(
        &browser,
        &url,
        Duration::from_secs(5),
        &shots.join("dashboard-live.png"),
    );
    assert!(dom.contains("data-ready=\"true\""), "no live data:\n{dom}");
    assert!(
        dom.contains(&format!("data-leader=\"{leader_name}\"")),
        "the leader {leader_name} is not named:\n{dom}"
    );
    for node in &cluster.nodes {
        let tag = row(&dom, &node.name).unwrap_or_else(|| panic!("no row for {}", node.name));
        assert!(tag.contains("data-up=\"true\""), "{tag}");
    }
    assert!(
        row(&dom, &leader_name).is_some_and(|t| t.contains("data-role=\"leader\"")),
        "{dom}"
    );
    // Every pair of members has a measured round trip (a number of milliseconds).
    for from in &cluster.nodes {
        for to in cluster.nodes.iter().filter(|n| n.name != from.name) {
            let cell = format!(
                "data-rtt-from=\"{}\" data-rtt-to=\"{}\">",
                from.name, to.name
            );
            let at = dom
                .find(&cell)
                .unwrap_or_else(|| panic!("no round trip {cell}:\n{dom}"));
            let text = &dom[at + cell.len()..];
            let ms = &text[..text.find('<').unwrap_or(0)];
            assert!(
                ms.parse::<f64>().is_ok_and(|v| v >= 0.0),
                "round trip {cell} shows {ms:?}"
            );
        }
    }

    // A follower stops: the page served by the leader marks it down within seconds.
    let victim = (leader + 1) % cluster.len();
    let victim_name = cluster.nodes[victim].name.clone();
    cluster.kill9(victim);
    let stopped = Instant::now();
    let dom = load(
        &browser,
        &url,
        Duration::from_secs(4),
        &shots.join("dashboard-member-down.png"),
    );
    let tag = row(&dom, &victim_name).unwrap_or_else(|| panic!("no row for {victim_name}"));
    assert!(
        tag.contains("data-up=\"false\"") && tag.contains("data-role=\"down\""),
        "{victim_name} not marked down {:?} after it stopped: {tag}",
        stopped.elapsed()
    );
    let other = (leader + 2) % cluster.len();
    assert!(row(&dom, &cluster.nodes[other].name).is_some_and(|t| t.contains("data-up=\"true\"")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concord_top_shows_the_members_and_the_leader() {
    let cluster = Cluster::start(BIN, 3).await;
    let leader = cluster.leader().await;
    // Members publish their client URLs shortly after a leader exists.
    let port = cluster.nodes[0].client_port;
    common::eventually(
        "every member's client URL to be published",
        common::WAIT,
        || async move {
            let page = common::http_get(port, "/v1/dashboard").await.ok()?.text();
            (page.matches("\"up\":true").count() == 3).then_some(())
        },
    )
    .await;
    let out = Command::new(BIN)
        .args(["top", "--iterations", "2", "--interval", "300ms"])
        .arg(format!("--endpoints={}", cluster.url((leader + 1) % 3)))
        .output()
        .expect("concord top runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    // Two screens; the second has a request rate (the first has nothing to compare with).
    let screens: Vec<&str> = text.split("leader: ").filter(|s| !s.is_empty()).collect();
    assert_eq!(screens.len(), 2, "{text}");
    let leader_name = &cluster.nodes[leader].name;
    assert!(screens[1].starts_with(&format!("{leader_name} ")), "{text}");
    assert!(
        screens[1].contains("gRPC requests/s: ") && !screens[1].contains("requests/s: -"),
        "{text}"
    );
    // A table row's cells, trimmed (the table right-aligns them).
    let cells = |name: &str| -> Vec<String> {
        screens[1]
            .lines()
            .map(|l| {
                l.split('|')
                    .map(|c| c.trim().to_string())
                    .collect::<Vec<_>>()
            })
            .find(|c| c.get(1).map(String::as_str) == Some(name))
            .unwrap_or_else(|| panic!("no row for {name}: {text}"))
    };
    for node in &cluster.nodes {
        assert_eq!(cells(&node.name)[2], "up", "{text}");
    }
    assert_eq!(cells(leader_name)[3], "leader", "{text}");
}
