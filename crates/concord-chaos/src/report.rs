//! summary.json and the timeline SVG.

use std::collections::HashMap;
use std::path::Path;

use plotters::prelude::*;
use serde_json::{json, Value};

use concord_check::history::EventType;

use crate::history::Brief;
use crate::nemesis::Window;

/// One completed operation.
#[derive(Clone, Debug)]
pub struct Completed {
    /// Invocation time (ns).
    pub invoke_ns: u64,
    /// Completion time (ns).
    pub complete_ns: u64,
    /// Completion type.
    pub kind: EventType,
    /// Function.
    pub f: String,
}

/// Pairs invocations with completions by process.
pub fn completions(events: &[Brief]) -> Vec<Completed> {
    let mut open: HashMap<u64, u64> = HashMap::new();
    let mut out = Vec::new();
    for e in events {
        // Watch deliveries are recorded as instant pairs; they are not client operations.
        if matches!(e.f.as_str(), "watch" | "watch-end" | "setup") {
            continue;
        }
        match e.kind {
            EventType::Invoke => {
                open.insert(e.process, e.time_ns);
            }
            k => {
                if let Some(t) = open.remove(&e.process) {
                    out.push(Completed {
                        invoke_ns: t,
                        complete_ns: e.time_ns,
                        kind: k,
                        f: e.f.clone(),
                    });
                }
            }
        }
    }
    out
}

fn is_write(f: &str) -> bool {
    matches!(f, "write" | "cas" | "add" | "transfer" | "acquire")
}

/// Counts and per-fault unavailability.
pub fn summary(events: &[Brief], windows: &[Window], extra: Value) -> Value {
    let count = |k: EventType| {
        events
            .iter()
            .filter(|e| e.kind == k && e.f != "setup" && e.f != "watch" && e.f != "watch-end")
            .count()
    };
    let done = completions(events);
    let mut faults = Vec::new();
    for w in windows {
        let first_ok = done
            .iter()
            .filter(|c| c.kind == EventType::Ok && is_write(&c.f) && c.invoke_ns >= w.start_ns)
            .map(|c| c.complete_ns)
            .min();
        let ops_in = done
            .iter()
            .filter(|c| c.complete_ns >= w.start_ns && c.complete_ns <= w.end_ns)
            .count();
        let ok_in = done
            .iter()
            .filter(|c| {
                c.kind == EventType::Ok && c.complete_ns >= w.start_ns && c.complete_ns <= w.end_ns
            })
            .count();
        let mut f = json!({
            "kind": w.fault.name(),
            "targets": w.targets,
            "start_ns": w.start_ns,
            "end_ns": w.end_ns,
            "completed_ops": ops_in,
            "ok_ops": ok_in,
        });
        if w.fault.hits_leader() {
            f["unavailable_ms"] =
                json!(first_ok.map(|t| (t.saturating_sub(w.start_ns)) as f64 / 1e6));
        }
        faults.push(f);
    }
    let leader_faults: Vec<f64> = faults
        .iter()
        .filter_map(|f| f.get("unavailable_ms").and_then(Value::as_f64))
        .collect();
    let mut lat: Vec<u64> = done
        .iter()
        .filter(|c| c.kind == EventType::Ok)
        .map(|c| c.complete_ns - c.invoke_ns)
        .collect();
    lat.sort_unstable();
    let pct = |p: f64| -> Option<f64> {
        if lat.is_empty() {
            None
        } else {
            let i = ((lat.len() as f64 - 1.0) * p).round() as usize;
            Some(lat[i.min(lat.len() - 1)] as f64 / 1e6)
        }
    };
    json!({
        "ops": count(EventType::Invoke),
        "ok": count(EventType::Ok),
        "fail": count(EventType::Fail),
        "info": count(EventType::Info),
        "latency_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": pct(1.0)},
        "faults": faults,
        "leader_fault_unavailability_ms": {
            "count": leader_faults.len(),
            "max": leader_faults.iter().cloned().fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x)))),
            "mean": if leader_faults.is_empty() { None } else { Some(leader_faults.iter().sum::<f64>() / leader_faults.len() as f64) },
        },
        "run": extra,
    })
}

/// Per-second ok throughput and p99 latency (ms).
fn per_second(done: &[Completed], secs: usize) -> (Vec<u32>, Vec<f64>) {
    let mut tput = vec![0u32; secs];
    let mut lats: Vec<Vec<u64>> = vec![Vec::new(); secs];
    for c in done.iter().filter(|c| c.kind == EventType::Ok) {
        let s = (c.complete_ns / 1_000_000_000) as usize;
        if s < secs {
            tput[s] += 1;
            lats[s].push(c.complete_ns - c.invoke_ns);
        }
    }
    let p99 = lats
        .iter_mut()
        .map(|v| {
            if v.is_empty() {
                0.0
            } else {
                v.sort_unstable();
                let i = ((v.len() as f64 - 1.0) * 0.99).round() as usize;
                v[i.min(v.len() - 1)] as f64 / 1e6
            }
        })
        .collect();
    (tput, p99)
}

fn color_of(kind: &str) -> RGBColor {
    match kind {
        "kill" | "kill-leader" => RGBColor(255, 170, 170),
        "pause" | "pause-leader" => RGBColor(255, 220, 150),
        "loss" => RGBColor(200, 200, 255),
        _ => RGBColor(190, 230, 190),
    }
}

/// Writes the timeline: ok ops/s and p99 latency per second, fault windows shaded.
pub fn timeline_svg(
    path: &Path,
    events: &[Brief],
    windows: &[Window],
    title: &str,
) -> Result<(), String> {
    let done = completions(events);
    let end_ns = events.iter().map(|e| e.time_ns).max().unwrap_or(0);
    let secs = (end_ns / 1_000_000_000) as usize + 1;
    let (tput, p99) = per_second(&done, secs);
    let err = |e: String| format!("timeline svg: {e}");
    let root = SVGBackend::new(path, (1200, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let (top, bottom) = root.split_vertically(350);
    let ymax_t = f64::from(tput.iter().copied().max().unwrap_or(1).max(1)) * 1.1;
    let ymax_l = p99.iter().cloned().fold(1.0f64, f64::max) * 1.1;
    let xmax = secs as f64;
    for (area, ymax, series, label, cap) in [
        (&top, ymax_t, tput.iter().map(|v| f64::from(*v)).collect::<Vec<_>>(), "ok ops/s", title.to_string()),
        (&bottom, ymax_l, p99.clone(), "p99 latency (ms)", "p99 latency of ok ops per second; shaded: faults (green network, red kill, orange pause, blue loss)".to_string()),
    ] {
        let mut chart = ChartBuilder::on(area)
            .caption(cap, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..xmax, 0f64..ymax)
            .map_err(|e| err(e.to_string()))?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc(label)
            .draw()
            .map_err(|e| err(e.to_string()))?;
        chart
            .draw_series(windows.iter().map(|w| {
                let c = color_of(w.fault.name());
                Rectangle::new(
                    [(w.start_ns as f64 / 1e9, 0.0), (w.end_ns as f64 / 1e9, ymax)],
                    c.mix(0.5).filled(),
                )
            }))
            .map_err(|e| err(e.to_string()))?;
        chart
            .draw_series(LineSeries::new(
                series.iter().enumerate().map(|(i, v)| (i as f64 + 0.5, *v)),
                &BLUE,
            ))
            .map_err(|e| err(e.to_string()))?;
    }
    root.present().map_err(|e| err(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nemesis::Fault;

    fn b(t: u64, p: u64, kind: EventType, f: &str) -> Brief {
        Brief {
            time_ns: t,
            process: p,
            kind,
            f: f.into(),
        }
    }

    #[test]
    fn unavailability_is_first_ok_write_invoked_after_fault() {
        let ev = vec![
            b(0, 1, EventType::Invoke, "write"),
            b(2_000_000_000, 1, EventType::Ok, "write"),
            b(1_100_000_000, 2, EventType::Invoke, "write"),
            b(1_300_000_000, 2, EventType::Info, "write"),
            b(1_400_000_000, 3, EventType::Invoke, "read"),
            b(1_500_000_000, 3, EventType::Ok, "read"),
            b(1_600_000_000, 4, EventType::Invoke, "write"),
            b(1_700_000_000, 4, EventType::Ok, "write"),
        ];
        let w = Window {
            fault: Fault::KillLeader,
            targets: vec!["n1".into()],
            start_ns: 1_000_000_000,
            end_ns: 3_000_000_000,
        };
        let s = summary(&ev, &[w], Value::Null);
        assert_eq!(s["faults"][0]["unavailable_ms"].as_f64(), Some(700.0));
        assert_eq!(s["ops"], 4);
        assert_eq!(s["info"], 1);
    }
}
