//! `concord endpoint status|health [--cluster]`: one row per endpoint, like etcdctl.
//! With `--cluster` the endpoints are every member's client URLs from the member list.

use std::time::Instant;

use clap::{Args, Subcommand};
use concord_proto::etcdserverpb as pb;
use concord_proto::etcdserverpb::kv_client::KvClient;
use concord_proto::etcdserverpb::maintenance_client::MaintenanceClient;

use super::printer::{self, Json, ObjBuilder};
use super::{dial, duration, out, timed, CtlError, CtlResult, Ctx, GlobalArgs, OutputFormat};

/// `concord endpoint`.
#[derive(Args, Debug)]
pub struct EndpointArgs {
    #[command(flatten)]
    /// Global flags.
    pub global: GlobalArgs,
    /// Use all endpoints from the cluster member list
    #[arg(long, global = true)]
    pub cluster: bool,
    #[command(subcommand)]
    /// The endpoint command.
    pub cmd: EndpointCmd,
}

/// The endpoint commands.
#[derive(Subcommand, Debug)]
pub enum EndpointCmd {
    /// Prints out the status of endpoints specified in `--endpoints` flag
    Status,
    /// Checks the healthiness of endpoints specified in `--endpoints` flag
    Health,
}

/// The status table's headers (etcdctl 3.4).
pub const STATUS_HEADERS: [&str; 10] = [
    "endpoint",
    "ID",
    "version",
    "db size",
    "is leader",
    "is learner",
    "raft term",
    "raft index",
    "raft applied index",
    "errors",
];

/// One endpoint's status as a row.
pub fn status_row(ep: &str, s: &pb::StatusResponse) -> Vec<String> {
    let member = s.header.map_or(0, |h| h.member_id);
    vec![
        ep.to_string(),
        format!("{member:x}"),
        s.version.clone(),
        printer::humanize_bytes(u64::try_from(s.db_size).unwrap_or(0)),
        (s.leader == member).to_string(),
        s.is_learner.to_string(),
        s.raft_term.to_string(),
        s.raft_index.to_string(),
        s.raft_applied_index.to_string(),
        s.errors.join(", "),
    ]
}

fn status_json(ep: &str, s: &pb::StatusResponse) -> Json {
    let status = ObjBuilder::new()
        .opt("header", printer::header_json(s.header.as_ref()))
        .str("version", &s.version)
        .num("dbSize", s.db_size)
        .num("leader", s.leader)
        .num("raftIndex", s.raft_index)
        .num("raftTerm", s.raft_term)
        .num("raftAppliedIndex", s.raft_applied_index)
        .arr(
            "errors",
            s.errors.iter().map(|e| Json::Str(e.clone())).collect(),
        )
        .num("dbSizeInUse", s.db_size_in_use)
        .bool("isLearner", s.is_learner)
        .build();
    Json::Obj(vec![
        ("Endpoint".into(), Json::Str(ep.into())),
        ("Status".into(), status),
    ])
}

/// The result of one health check.
#[derive(Clone, Debug)]
pub struct Health {
    /// The endpoint as given.
    pub ep: String,
    /// Whether a linearizable read committed.
    pub healthy: bool,
    /// How long it took (Go's duration text).
    pub took: String,
    /// Why not healthy.
    pub error: String,
}

/// Health results as text, split into standard output and standard error.
pub fn format_health(results: &[Health], fmt: OutputFormat) -> (String, String) {
    match fmt {
        OutputFormat::Json => {
            let items = results
                .iter()
                .map(|h| {
                    ObjBuilder::new()
                        .opt("endpoint", Some(Json::Str(h.ep.clone())))
                        .opt("health", Some(Json::Bool(h.healthy)))
                        .opt("took", Some(Json::Str(h.took.clone())))
                        .str("error", &h.error)
                        .build()
                })
                .collect();
            (format!("{}\n", Json::Arr(items).render()), String::new())
        }
        OutputFormat::Table => {
            let rows: Vec<Vec<String>> = results
                .iter()
                .map(|h| {
                    vec![
                        h.ep.clone(),
                        h.healthy.to_string(),
                        h.took.clone(),
                        h.error.clone(),
                    ]
                })
                .collect();
            (
                printer::table(&["endpoint", "health", "took", "error"], &rows),
                String::new(),
            )
        }
        _ => {
            let (mut ok, mut bad) = (String::new(), String::new());
            for h in results {
                if h.healthy {
                    ok.push_str(&format!(
                        "{} is healthy: successfully committed proposal: took = {}\n",
                        h.ep, h.took
                    ));
                } else {
                    bad.push_str(&format!(
                        "{} is unhealthy: failed to commit proposal: {}\n",
                        h.ep, h.error
                    ));
                }
            }
            (ok, bad)
        }
    }
}

async fn endpoints(args: &EndpointArgs) -> CtlResult<Vec<String>> {
    if !args.cluster {
        return Ok(args.global.endpoints.clone());
    }
    let ctx = Ctx::connect(&args.global).await?;
    let r = ctx
        .call(ctx.cluster().member_list(pb::MemberListRequest {
            linearizable: false,
        }))
        .await?;
    let mut eps: Vec<String> = Vec::new();
    for m in r.members {
        for u in m.client_ur_ls {
            if !eps.contains(&u) {
                eps.push(u);
            }
        }
    }
    Ok(eps)
}

async fn check_health(ep: &str, g: &GlobalArgs) -> Health {
    let start = Instant::now();
    let result: CtlResult<()> = async {
        let channel = dial(ep, g).await?;
        let range = timed(
            g.command_timeout,
            KvClient::new(channel.clone()).range(pb::RangeRequest {
                key: b"health".to_vec(),
                ..Default::default()
            }),
        )
        .await;
        match range {
            Ok(_) => {}
            // etcd counts a permission error as healthy: the proposal was committed.
            Err(e) if e.0.contains("permission denied") => {}
            Err(e) => return Err(e),
        }
        let alarms = timed(
            g.command_timeout,
            MaintenanceClient::new(channel).alarm(pb::AlarmRequest {
                action: pb::alarm_request::AlarmAction::Get as i32,
                member_id: 0,
                alarm: 0,
            }),
        )
        .await;
        if let Ok(a) = alarms {
            let names: Vec<&str> = a
                .alarms
                .iter()
                .filter_map(|m| match m.alarm {
                    1 => Some("NOSPACE"),
                    2 => Some("CORRUPT"),
                    _ => None,
                })
                .collect();
            if !names.is_empty() {
                return Err(CtlError::new(format!(
                    "Active Alarm(s): {}",
                    names.join(" ")
                )));
            }
        }
        Ok(())
    }
    .await;
    let took = duration::format(start.elapsed());
    match result {
        Ok(()) => Health {
            ep: ep.to_string(),
            healthy: true,
            took,
            error: String::new(),
        },
        Err(e) => Health {
            ep: ep.to_string(),
            healthy: false,
            took,
            error: e.0,
        },
    }
}

/// Runs `concord endpoint ...`.
pub async fn run(args: EndpointArgs) -> CtlResult<()> {
    let eps = endpoints(&args).await?;
    let g = &args.global;
    match args.cmd {
        EndpointCmd::Status => {
            let mut rows = Vec::new();
            let mut json = Vec::new();
            let mut failed = false;
            for ep in &eps {
                let status = async {
                    let channel = dial(ep, g).await?;
                    timed(
                        g.command_timeout,
                        MaintenanceClient::new(channel).status(pb::StatusRequest {}),
                    )
                    .await
                }
                .await;
                match status {
                    Ok(s) => {
                        rows.push(status_row(ep, &s));
                        json.push(status_json(ep, &s));
                    }
                    Err(e) => {
                        failed = true;
                        eprintln!("Failed to get the status of endpoint {ep} ({e})");
                    }
                }
            }
            out(&match g.write_out {
                OutputFormat::Json => format!("{}\n", Json::Arr(json).render()),
                OutputFormat::Table => printer::table(&STATUS_HEADERS, &rows),
                _ => printer::comma_rows(&rows),
            });
            if failed {
                return Err(CtlError::new("could not get the status of every endpoint"));
            }
        }
        EndpointCmd::Health => {
            let mut results = Vec::new();
            for ep in &eps {
                results.push(check_health(ep, g).await);
            }
            let (ok, bad) = format_health(&results, g.write_out);
            out(&ok);
            eprint!("{bad}");
            if results.iter().any(|h| !h.healthy) {
                return Err(CtlError::new("unhealthy cluster"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_formats() {
        let s = pb::StatusResponse {
            header: Some(pb::ResponseHeader {
                member_id: 0x8e9e05c52164694d,
                ..Default::default()
            }),
            version: "3.5.0".into(),
            db_size: 20480,
            leader: 0x8e9e05c52164694d,
            raft_index: 4,
            raft_term: 2,
            raft_applied_index: 4,
            ..Default::default()
        };
        let rows = vec![status_row("127.0.0.1:2379", &s)];
        assert_eq!(
            printer::comma_rows(&rows),
            "127.0.0.1:2379, 8e9e05c52164694d, 3.5.0, 20 kB, true, false, 2, 4, 4, \n"
        );
        assert_eq!(
            printer::table(&STATUS_HEADERS, &rows),
            "+----------------+------------------+---------+---------+-----------+------------+-----------+------------+--------------------+--------+\n\
             |    ENDPOINT    |        ID        | VERSION | DB SIZE | IS LEADER | IS LEARNER | RAFT TERM | RAFT INDEX | RAFT APPLIED INDEX | ERRORS |\n\
             +----------------+------------------+---------+---------+-----------+------------+-----------+------------+--------------------+--------+\n\
             | 127.0.0.1:2379 | 8e9e05c52164694d |   3.5.0 |   20 kB |      true |      false |         2 |          4 |                  4 |        |\n\
             +----------------+------------------+---------+---------+-----------+------------+-----------+------------+--------------------+--------+\n"
        );
    }

    #[test]
    fn health_formats() {
        let results = vec![
            Health {
                ep: "127.0.0.1:2379".into(),
                healthy: true,
                took: "1.2ms".into(),
                error: String::new(),
            },
            Health {
                ep: "127.0.0.1:22379".into(),
                healthy: false,
                took: "2s".into(),
                error: "context deadline exceeded".into(),
            },
        ];
        let (ok, bad) = format_health(&results, OutputFormat::Simple);
        assert_eq!(
            ok,
            "127.0.0.1:2379 is healthy: successfully committed proposal: took = 1.2ms\n"
        );
        assert_eq!(
            bad,
            "127.0.0.1:22379 is unhealthy: failed to commit proposal: context deadline exceeded\n"
        );
        let (json, _) = format_health(&results[..1], OutputFormat::Json);
        assert_eq!(
            json,
            "[{\"endpoint\":\"127.0.0.1:2379\",\"health\":true,\"took\":\"1.2ms\"}]\n"
        );
    }
}
