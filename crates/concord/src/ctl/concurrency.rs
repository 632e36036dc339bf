//! `concord elect` and `concord lock`: etcd's election and lock services, each held by a
//! session lease that a background task keeps alive (renewed at a third of its TTL).
//! Ctrl-C resigns or unlocks and revokes the lease; a lost session is an error.

use std::time::Duration;

use clap::Args;
use concord_proto::etcdserverpb as pb;
use concord_proto::etcdserverpb::lease_client::LeaseClient;
use concord_proto::v3electionpb as epb;
use concord_proto::v3electionpb::election_client::ElectionClient;
use concord_proto::v3lockpb as lpb;
use concord_proto::v3lockpb::lock_client::LockClient;
use tokio::task::JoinHandle;

use super::kv::format_range;
use super::{out, CtlError, CtlResult, Ctx, GlobalArgs};

/// `concord elect`.
#[derive(Args, Debug)]
pub struct ElectArgs {
    #[command(flatten)]
    /// Global flags.
    pub global: GlobalArgs,
    /// The election's name
    pub name: String,
    /// The value to campaign with (required unless --listen)
    pub proposal: Option<String>,
    /// Observation mode: print each new leader instead of campaigning
    #[arg(short, long)]
    pub listen: bool,
    /// Session lease TTL, in seconds
    #[arg(long, default_value_t = 60)]
    pub ttl: i64,
}

/// `concord lock`.
#[derive(Args, Debug)]
pub struct LockArgs {
    #[command(flatten)]
    /// Global flags.
    pub global: GlobalArgs,
    /// The lock's name
    pub name: String,
    /// A command to run while holding the lock (with ETCD_LOCK_KEY and ETCD_LOCK_REV set);
    /// without one, the lock is held until Ctrl-C
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
    /// Timeout for session, in seconds
    #[arg(long, default_value_t = 10)]
    pub ttl: i64,
}

/// A lease kept alive in the background.
struct Session {
    lease: i64,
    keeper: JoinHandle<String>,
    client: LeaseClient<super::Conn>,
    timeout: Duration,
}

impl Session {
    async fn start(ctx: &Ctx, ttl: i64) -> CtlResult<Session> {
        if ttl <= 0 {
            return Err(CtlError::new("--ttl must be positive"));
        }
        let client = ctx.lease();
        let grant = ctx
            .call(
                client
                    .clone()
                    .lease_grant(pb::LeaseGrantRequest { ttl, id: 0 }),
            )
            .await?;
        if !grant.error.is_empty() {
            return Err(CtlError::new(grant.error));
        }
        let lease = grant.id;
        let mut keeper_client = client.clone();
        let interval = Duration::from_millis((grant.ttl.max(1) as u64) * 1000 / 3);
        let keeper = tokio::spawn(async move {
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
            let mut responses = match keeper_client.lease_keep_alive(stream).await {
                Ok(r) => r.into_inner(),
                Err(e) => return e.message().to_string(),
            };
            loop {
                if tx
                    .send(pb::LeaseKeepAliveRequest { id: lease })
                    .await
                    .is_err()
                {
                    return "keep-alive stream closed".into();
                }
                match responses.message().await {
                    Ok(Some(r)) if r.ttl > 0 => {}
                    Ok(Some(_)) => return "lease expired".into(),
                    Ok(None) => return "keep-alive stream closed".into(),
                    Err(e) => return e.message().to_string(),
                }
                tokio::time::sleep(interval).await;
            }
        });
        Ok(Session {
            lease,
            keeper,
            client,
            timeout: ctx.global.command_timeout,
        })
    }

    /// Waits until the session is lost, returning why.
    async fn lost(&mut self) -> String {
        match (&mut self.keeper).await {
            Ok(why) => why,
            Err(e) => e.to_string(),
        }
    }

    /// Stops the keep-alive and revokes the lease (its keys go with it).
    async fn close(mut self) {
        self.keeper.abort();
        let _ = tokio::time::timeout(
            self.timeout,
            self.client
                .lease_revoke(pb::LeaseRevokeRequest { id: self.lease }),
        )
        .await;
    }
}

/// Prints the key-value pair at `key` like `get` does.
async fn print_key(ctx: &Ctx, key: &[u8]) -> CtlResult<bool> {
    let r = ctx
        .call(ctx.kv().range(pb::RangeRequest {
            key: key.to_vec(),
            ..Default::default()
        }))
        .await?;
    out(&format_range(&r, ctx.printing(), false));
    Ok(!r.kvs.is_empty())
}

/// Runs `concord elect`.
pub async fn elect(args: ElectArgs) -> CtlResult<()> {
    if !args.listen && args.proposal.is_none() {
        return Err(CtlError::new("no proposal argument but -l not set"));
    }
    let ctx = Ctx::connect(&args.global).await?;
    let mut election = ElectionClient::new(ctx.channel.clone());
    if args.listen {
        let mut stream = ctx
            .call(election.observe(epb::LeaderRequest {
                name: args.name.clone().into_bytes(),
            }))
            .await?;
        loop {
            let next = tokio::select! {
                r = stream.message() => r,
                _ = tokio::signal::ctrl_c() => return Ok(()),
            };
            match next {
                Ok(Some(r)) => {
                    let range = pb::RangeResponse {
                        header: r.header,
                        count: i64::from(r.kv.is_some()),
                        kvs: r.kv.into_iter().collect(),
                        more: false,
                    };
                    out(&format_range(&range, ctx.printing(), false));
                }
                Ok(None) => return Err(CtlError::new("observe stream closed by the server")),
                Err(e) => return Err(e.into()),
            }
        }
    }
    let mut session = Session::start(&ctx, args.ttl).await?;
    let campaign = election.campaign(epb::CampaignRequest {
        name: args.name.clone().into_bytes(),
        lease: session.lease,
        value: args.proposal.clone().unwrap_or_default().into_bytes(),
    });
    let leader = tokio::select! {
        r = campaign => match r {
            Ok(r) => r.into_inner().leader,
            Err(e) => {
                session.close().await;
                return Err(e.into());
            }
        },
        why = session.lost() => return Err(CtlError::new(format!("elect: session expired ({why})"))),
        _ = tokio::signal::ctrl_c() => {
            session.close().await;
            return Ok(());
        }
    };
    let Some(leader) = leader else {
        session.close().await;
        return Err(CtlError::new("elect: the server returned no leader key"));
    };
    if let Err(e) = print_key(&ctx, &leader.key).await {
        session.close().await;
        return Err(e);
    }
    tokio::select! {
        why = session.lost() => return Err(CtlError::new(format!("elect: session expired ({why})"))),
        _ = tokio::signal::ctrl_c() => {}
    }
    let resign = ctx
        .call(election.resign(epb::ResignRequest {
            leader: Some(leader),
        }))
        .await;
    session.close().await;
    resign.map(|_| ())
}

/// Runs `concord lock`.
pub async fn lock(args: LockArgs) -> CtlResult<()> {
    let ctx = Ctx::connect(&args.global).await?;
    let mut locks = LockClient::new(ctx.channel.clone());
    let mut session = Session::start(&ctx, args.ttl).await?;
    let acquire = locks.lock(lpb::LockRequest {
        name: args.name.clone().into_bytes(),
        lease: session.lease,
    });
    let resp = tokio::select! {
        r = acquire => match r {
            Ok(r) => r.into_inner(),
            Err(e) => {
                session.close().await;
                return Err(e.into());
            }
        },
        why = session.lost() => return Err(CtlError::new(format!("session expired ({why})"))),
        _ = tokio::signal::ctrl_c() => {
            session.close().await;
            return Ok(());
        }
    };
    let key = resp.key.clone();
    let rev = resp.header.map_or(0, |h| h.revision);
    let unlock = |mut locks: LockClient<super::Conn>, key: Vec<u8>| async move {
        tokio::time::timeout(
            Duration::from_secs(5),
            locks.unlock(lpb::UnlockRequest { key }),
        )
        .await
    };
    if let Some((program, rest)) = args.command.split_first() {
        let mut cmd = std::process::Command::new(program);
        cmd.args(rest)
            .env("ETCD_LOCK_KEY", String::from_utf8_lossy(&key).into_owned())
            .env("ETCD_LOCK_REV", rev.to_string());
        let program = program.clone();
        let status = tokio::task::spawn_blocking(move || cmd.status()).await;
        let _ = unlock(locks, key).await;
        session.close().await;
        return match status {
            Ok(Ok(s)) if s.success() => Ok(()),
            Ok(Ok(s)) => Err(CtlError::new(match s.code() {
                Some(c) => format!("exit status {c}"),
                None => "signal: killed".to_string(),
            })),
            Ok(Err(e)) => Err(CtlError::new(format!("exec: {program:?}: {e}"))),
            Err(e) => Err(CtlError::new(e.to_string())),
        };
    }
    match print_key(&ctx, &key).await {
        Ok(true) => {}
        Ok(false) => {
            session.close().await;
            return Err(CtlError::new("lock lost on init"));
        }
        Err(e) => {
            session.close().await;
            return Err(e);
        }
    }
    eprintln!("fencing token (lock revision): {rev}");
    tokio::select! {
        why = session.lost() => return Err(CtlError::new(format!("session expired ({why})"))),
        _ = tokio::signal::ctrl_c() => {}
    }
    let r = unlock(locks, key).await;
    session.close().await;
    match r {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(CtlError::new("context deadline exceeded")),
    }
}
