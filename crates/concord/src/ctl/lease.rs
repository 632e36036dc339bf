//! `concord lease grant|revoke|timetolive|list|keep-alive`. Lease ids are read and
//! printed in hexadecimal, like etcdctl (`lease 694d7f3a1b2c0a11 granted with TTL(10s)`).

use std::time::Duration;

use clap::{Args, Subcommand};
use concord_proto::etcdserverpb as pb;

use super::printer::{self, Json};
use super::{out, parse_lease_id, CtlError, CtlResult, Ctx, GlobalArgs, OutputFormat};

/// `concord lease`.
#[derive(Args, Debug)]
pub struct LeaseArgs {
    #[command(flatten)]
    /// Global flags.
    pub global: GlobalArgs,
    #[command(subcommand)]
    /// The lease command.
    pub cmd: LeaseCmd,
}

/// The lease commands.
#[derive(Subcommand, Debug)]
pub enum LeaseCmd {
    /// Creates leases
    Grant {
        /// Time to live, in seconds
        ttl: i64,
    },
    /// Revokes leases
    Revoke {
        /// The lease id, in hex
        id: String,
    },
    /// Get lease information
    Timetolive {
        /// The lease id, in hex
        id: String,
        /// Get keys attached to this lease
        #[arg(long)]
        keys: bool,
    },
    /// List all active leases
    List,
    /// Keeps leases alive (renew)
    KeepAlive {
        /// The lease id, in hex
        id: String,
        /// Resets the keep-alive time to its original value and exits immediately
        #[arg(long)]
        once: bool,
    },
}

/// `lease grant` in simple format.
pub fn simple_grant(r: &pb::LeaseGrantResponse) -> String {
    format!("lease {:016x} granted with TTL({}s)\n", r.id, r.ttl)
}

/// `lease timetolive` in simple format.
pub fn simple_ttl(r: &pb::LeaseTimeToLiveResponse, keys: bool) -> String {
    if r.granted_ttl == 0 && r.ttl == -1 {
        return format!("lease {:016x} already expired\n", r.id);
    }
    let mut text = format!(
        "lease {:016x} granted with TTL({}s), remaining({}s)",
        r.id, r.granted_ttl, r.ttl
    );
    if keys {
        let ks: Vec<String> = r
            .keys
            .iter()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        text.push_str(&format!(", attached keys([{}])", ks.join(" ")));
    }
    text.push('\n');
    text
}

/// `lease list` in simple format.
pub fn simple_list(r: &pb::LeaseLeasesResponse) -> String {
    let mut text = format!("found {} leases\n", r.leases.len());
    for l in &r.leases {
        text.push_str(&format!("{:016x}\n", l.id));
    }
    text
}

/// etcdctl's JSON line for grant and keep-alive answers: the header's fields, ID, TTL.
fn id_ttl_json(header: Option<&pb::ResponseHeader>, id: i64, ttl: i64) -> String {
    format!(
        "{}\n",
        printer::promoted_header(header)
            .num_always("ID", id)
            .num_always("TTL", ttl)
            .build()
            .render()
    )
}

fn keepalive_line(r: &pb::LeaseKeepAliveResponse, fmt: OutputFormat) -> String {
    match fmt {
        OutputFormat::Json => id_ttl_json(r.header.as_ref(), r.id, r.ttl),
        _ => format!("lease {:016x} keepalived with TTL({})\n", r.id, r.ttl),
    }
}

/// Runs `concord lease ...`.
pub async fn run(args: LeaseArgs) -> CtlResult<()> {
    // Bad arguments are reported before dialing.
    match &args.cmd {
        LeaseCmd::Revoke { id }
        | LeaseCmd::Timetolive { id, .. }
        | LeaseCmd::KeepAlive { id, .. } => {
            parse_lease_id(id)?;
        }
        LeaseCmd::Grant { .. } | LeaseCmd::List => {}
    }
    let ctx = Ctx::connect(&args.global).await?;
    let fmt = ctx.format();
    let json = fmt == OutputFormat::Json;
    match args.cmd {
        LeaseCmd::Grant { ttl } => {
            let r = ctx
                .call(
                    ctx.lease()
                        .lease_grant(pb::LeaseGrantRequest { ttl, id: 0 }),
                )
                .await?;
            if !r.error.is_empty() {
                return Err(CtlError::new(r.error));
            }
            if json {
                out(&id_ttl_json(r.header.as_ref(), r.id, r.ttl));
            } else {
                out(&simple_grant(&r));
            }
        }
        LeaseCmd::Revoke { id } => {
            let id = parse_lease_id(&id)?;
            let r = ctx
                .call(ctx.lease().lease_revoke(pb::LeaseRevokeRequest { id }))
                .await?;
            if json {
                out(&format!(
                    "{}\n",
                    printer::ObjBuilder::new()
                        .opt("header", printer::header_json(r.header.as_ref()))
                        .build()
                        .render()
                ));
            } else {
                out(&format!("lease {id:016x} revoked\n"));
            }
        }
        LeaseCmd::Timetolive { id, keys } => {
            let id = parse_lease_id(&id)?;
            let r = ctx
                .call(
                    ctx.lease()
                        .lease_time_to_live(pb::LeaseTimeToLiveRequest { id, keys }),
                )
                .await?;
            if json {
                let ks = r.keys.iter().map(|k| Json::bytes(k)).collect();
                out(&format!(
                    "{}\n",
                    printer::promoted_header(r.header.as_ref())
                        .num_always("ID", r.id)
                        .num_always("TTL", r.ttl)
                        .num_always("GrantedTTL", r.granted_ttl)
                        .opt(
                            "Keys",
                            Some(if keys {
                                Json::Arr(ks)
                            } else {
                                Json::Num("null".into())
                            })
                        )
                        .build()
                        .render()
                ));
            } else {
                out(&simple_ttl(&r, keys));
            }
        }
        LeaseCmd::List => {
            let r = ctx
                .call(ctx.lease().lease_leases(pb::LeaseLeasesRequest {}))
                .await?;
            if json {
                let leases = r
                    .leases
                    .iter()
                    .map(|l| Json::Obj(vec![("id".into(), Json::num(l.id))]))
                    .collect();
                out(&format!(
                    "{}\n",
                    printer::promoted_header(r.header.as_ref())
                        .opt("leases", Some(Json::Arr(leases)))
                        .build()
                        .render()
                ));
            } else {
                out(&simple_list(&r));
            }
        }
        LeaseCmd::KeepAlive { id, once } => {
            let id = parse_lease_id(&id)?;
            keep_alive(&ctx, id, once, fmt).await?;
        }
    }
    Ok(())
}

async fn keep_alive(ctx: &Ctx, id: i64, once: bool, fmt: OutputFormat) -> CtlResult<()> {
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::LeaseKeepAliveRequest>(1);
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let mut responses = ctx.call(ctx.lease().lease_keep_alive(stream)).await?;
    loop {
        if tx.send(pb::LeaseKeepAliveRequest { id }).await.is_err() {
            return Err(CtlError::new("keep-alive stream closed"));
        }
        let next = tokio::select! {
            r = tokio::time::timeout(ctx.global.command_timeout, responses.message()) => r,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let resp = match next {
            Err(_) => return Err(CtlError::new("context deadline exceeded")),
            Ok(Err(status)) => return Err(status.into()),
            Ok(Ok(None)) => return Err(CtlError::new("keep-alive stream closed by the server")),
            Ok(Ok(Some(resp))) => resp,
        };
        if resp.ttl <= 0 {
            if once {
                return Err(CtlError::new("etcdserver: requested lease not found"));
            }
            if fmt != OutputFormat::Json {
                out(&format!("lease {id:016x} expired or revoked.\n"));
            }
            return Ok(());
        }
        out(&keepalive_line(&resp, fmt));
        if once {
            return Ok(());
        }
        // Renew at a third of the TTL, as clientv3 does.
        let wait = Duration::from_millis((resp.ttl as u64).saturating_mul(1000) / 3)
            .max(Duration::from_millis(500));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_lines() {
        let g = pb::LeaseGrantResponse {
            id: 0x694d7f3a1b2c,
            ttl: 10,
            ..Default::default()
        };
        assert_eq!(
            simple_grant(&g),
            "lease 0000694d7f3a1b2c granted with TTL(10s)\n"
        );
        let t = pb::LeaseTimeToLiveResponse {
            id: 0x694d7f3a1b2c,
            ttl: 8,
            granted_ttl: 10,
            keys: vec![b"a".to_vec(), b"b".to_vec()],
            header: None,
        };
        assert_eq!(
            simple_ttl(&t, true),
            "lease 0000694d7f3a1b2c granted with TTL(10s), remaining(8s), attached keys([a b])\n"
        );
        assert_eq!(
            simple_ttl(&t, false),
            "lease 0000694d7f3a1b2c granted with TTL(10s), remaining(8s)\n"
        );
        let gone = pb::LeaseTimeToLiveResponse {
            id: 1,
            ttl: -1,
            ..Default::default()
        };
        assert_eq!(
            simple_ttl(&gone, false),
            "lease 0000000000000001 already expired\n"
        );
        let l = pb::LeaseLeasesResponse {
            header: None,
            leases: vec![pb::LeaseStatus { id: 0x10 }],
        };
        assert_eq!(simple_list(&l), "found 1 leases\n0000000000000010\n");
    }
}
