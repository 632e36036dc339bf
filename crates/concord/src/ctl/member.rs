//! `concord member add|remove|update|promote|list`. Member ids are read and printed in
//! hexadecimal, like etcdctl.

use clap::{Args, Subcommand};
use concord_proto::etcdserverpb as pb;

use super::printer::{self, Json, ObjBuilder};
use super::{out, parse_member_id, CtlError, CtlResult, Ctx, GlobalArgs, OutputFormat};

/// `concord member`.
#[derive(Args, Debug)]
pub struct MemberArgs {
    #[command(flatten)]
    /// Global flags.
    pub global: GlobalArgs,
    #[command(subcommand)]
    /// The member command.
    pub cmd: MemberCmd,
}

/// The member commands.
#[derive(Subcommand, Debug)]
pub enum MemberCmd {
    /// Adds a member into the cluster
    Add {
        /// The new member's name
        name: String,
        /// Comma separated peer URLs for the new member
        #[arg(long, value_delimiter = ',')]
        peer_urls: Vec<String>,
        /// Indicates if the new member is raft learner
        #[arg(long)]
        learner: bool,
    },
    /// Removes a member from the cluster
    Remove {
        /// The member id, in hex
        id: String,
    },
    /// Updates a member in the cluster
    Update {
        /// The member id, in hex
        id: String,
        /// Comma separated peer URLs for the updated member
        #[arg(long, value_delimiter = ',')]
        peer_urls: Vec<String>,
    },
    /// Lists all members in the cluster
    List,
    /// Promotes a non-voting member in the cluster
    Promote {
        /// The member id, in hex
        id: String,
    },
    /// Shows every member's gossip (SWIM) state and phi, as the endpoint's member sees them
    Gossip,
    /// Shows the AP ring as the endpoint's member sees it: each member's share of first
    /// replicas, whether it is alive, and the hints held for it there
    Ring,
}

/// The member list as etcdctl's table rows.
pub fn member_rows(members: &[pb::Member]) -> Vec<Vec<String>> {
    members
        .iter()
        .map(|m| {
            vec![
                format!("{:x}", m.id),
                if m.name.is_empty() {
                    "unstarted"
                } else {
                    "started"
                }
                .to_string(),
                m.name.clone(),
                m.peer_ur_ls.join(","),
                m.client_ur_ls.join(","),
                m.is_learner.to_string(),
            ]
        })
        .collect()
}

/// The member list table's headers.
pub const MEMBER_HEADERS: [&str; 6] = [
    "ID",
    "Status",
    "Name",
    "Peer Addrs",
    "Client Addrs",
    "Is Learner",
];

fn member_json(m: &pb::Member) -> Json {
    ObjBuilder::new()
        .num("ID", m.id)
        .str("name", &m.name)
        .arr(
            "peerURLs",
            m.peer_ur_ls.iter().map(|u| Json::Str(u.clone())).collect(),
        )
        .arr(
            "clientURLs",
            m.client_ur_ls
                .iter()
                .map(|u| Json::Str(u.clone()))
                .collect(),
        )
        .bool("isLearner", m.is_learner)
        .build()
}

fn members_json(header: Option<&pb::ResponseHeader>, members: &[pb::Member]) -> String {
    format!(
        "{}\n",
        ObjBuilder::new()
            .opt("header", printer::header_json(header))
            .arr("members", members.iter().map(member_json).collect())
            .build()
            .render()
    )
}

/// `member list` output.
pub fn format_list(r: &pb::MemberListResponse, fmt: OutputFormat) -> String {
    match fmt {
        OutputFormat::Json => members_json(r.header.as_ref(), &r.members),
        OutputFormat::Table => printer::table(&MEMBER_HEADERS, &member_rows(&r.members)),
        _ => printer::comma_rows(&member_rows(&r.members)),
    }
}

/// The environment for starting an added member, as `etcdctl member add` prints it (with
/// Concord's variable names, which `concord server` reads).
pub fn added_env(name: &str, new_id: u64, peer_urls: &[String], members: &[pb::Member]) -> String {
    let mut conf = Vec::new();
    for m in members {
        for u in &m.peer_ur_ls {
            let n = if m.id == new_id {
                name
            } else {
                m.name.as_str()
            };
            conf.push(format!("{n}={u}"));
        }
    }
    format!(
        "\nCONCORD_NAME={:?}\nCONCORD_INITIAL_CLUSTER={:?}\nCONCORD_INITIAL_ADVERTISE_PEER_URLS={:?}\nCONCORD_INITIAL_CLUSTER_STATE=\"existing\"\n",
        name,
        conf.join(","),
        peer_urls.join(",")
    )
}

/// The answer to remove, update and promote: the member list as JSON, or one line naming
/// what happened to member `id`.
fn changed(
    json: bool,
    id: u64,
    what: &str,
    header: Option<&pb::ResponseHeader>,
    members: &[pb::Member],
) -> String {
    if json {
        members_json(header, members)
    } else {
        let cluster = header.map_or(0, |h| h.cluster_id);
        format!("Member {id:16x} {what} cluster {cluster:16x}\n")
    }
}

/// Runs `concord member ...`.
pub async fn run(args: MemberArgs) -> CtlResult<()> {
    // Bad arguments are reported before dialing.
    match &args.cmd {
        MemberCmd::Remove { id } | MemberCmd::Update { id, .. } | MemberCmd::Promote { id } => {
            parse_member_id(id)?;
        }
        MemberCmd::Add { .. } | MemberCmd::List | MemberCmd::Gossip | MemberCmd::Ring => {}
    }
    let ctx = Ctx::connect(&args.global).await?;
    let fmt = ctx.format();
    let json = fmt == OutputFormat::Json;
    match args.cmd {
        MemberCmd::Add {
            name,
            peer_urls,
            learner,
        } => {
            if peer_urls.is_empty() {
                return Err(CtlError::new("member peer urls not provided"));
            }
            let r = ctx
                .call(ctx.cluster().member_add(pb::MemberAddRequest {
                    peer_ur_ls: peer_urls.clone(),
                    is_learner: learner,
                }))
                .await?;
            let id = r.member.as_ref().map_or(0, |m| m.id);
            if json {
                out(&format!(
                    "{}\n",
                    ObjBuilder::new()
                        .opt("header", printer::header_json(r.header.as_ref()))
                        .opt("member", r.member.as_ref().map(member_json))
                        .arr("members", r.members.iter().map(member_json).collect())
                        .build()
                        .render()
                ));
            } else {
                let cluster = r.header.map_or(0, |h| h.cluster_id);
                out(&format!("Member {id:16x} added to cluster {cluster:16x}\n"));
                out(&added_env(&name, id, &peer_urls, &r.members));
            }
        }
        MemberCmd::Remove { id } => {
            let id = parse_member_id(&id)?;
            let r = ctx
                .call(ctx.cluster().member_remove(pb::MemberRemoveRequest { id }))
                .await?;
            out(&changed(
                json,
                id,
                "removed from",
                r.header.as_ref(),
                &r.members,
            ));
        }
        MemberCmd::Update { id, peer_urls } => {
            let id = parse_member_id(&id)?;
            if peer_urls.is_empty() {
                return Err(CtlError::new("member peer urls not provided"));
            }
            let r = ctx
                .call(ctx.cluster().member_update(pb::MemberUpdateRequest {
                    id,
                    peer_ur_ls: peer_urls,
                }))
                .await?;
            out(&changed(
                json,
                id,
                "updated in",
                r.header.as_ref(),
                &r.members,
            ));
        }
        MemberCmd::Promote { id } => {
            let id = parse_member_id(&id)?;
            let r = ctx
                .call(
                    ctx.cluster()
                        .member_promote(pb::MemberPromoteRequest { id }),
                )
                .await?;
            out(&changed(
                json,
                id,
                "promoted in",
                r.header.as_ref(),
                &r.members,
            ));
        }
        MemberCmd::List => {
            let r = ctx
                .call(
                    ctx.cluster()
                        .member_list(pb::MemberListRequest { linearizable: true }),
                )
                .await?;
            out(&format_list(&r, fmt));
        }
        MemberCmd::Gossip => gossip(&ctx).await?,
        MemberCmd::Ring => ring(&ctx).await?,
    }
    Ok(())
}

/// The columns of `member gossip`.
pub const GOSSIP_HEADERS: [&str; 7] = [
    "ID",
    "Name",
    "State",
    "Phi",
    "Generation",
    "Incarnation",
    "For",
];

/// `concord member gossip`: the `/v1/members` view of the first endpoint that answers,
/// with the members' names from the member list.
async fn gossip(ctx: &Ctx) -> CtlResult<()> {
    let global = &ctx.global;
    let view = first_json(ctx, "/v1/members").await?;
    if global.write_out == OutputFormat::Json {
        out(&format!("{view}\n"));
        return Ok(());
    }
    let names = member_names(ctx).await?;
    let rows = gossip_rows(&view, &names)?;
    out(&match global.write_out {
        OutputFormat::Table => printer::table(&GOSSIP_HEADERS, &rows),
        _ => printer::comma_rows(&rows),
    });
    Ok(())
}

/// `path` on the first endpoint that answers it, as JSON.
async fn first_json(ctx: &Ctx, path: &str) -> CtlResult<serde_json::Value> {
    let global = &ctx.global;
    let mut last = CtlError::new("no endpoint given");
    for endpoint in &global.endpoints {
        match super::http::get_json(endpoint, path, global.command_timeout).await {
            Ok(v) => return Ok(v),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Member names by hex id, from the member list (none when the endpoint is an AP-only
/// member, which does not serve it: the views then carry the names).
async fn member_names(ctx: &Ctx) -> CtlResult<std::collections::BTreeMap<String, String>> {
    Ok(ctx
        .call(ctx.cluster().member_list(pb::MemberListRequest::default()))
        .await
        .map(|r| r.members)
        .unwrap_or_default()
        .into_iter()
        .map(|m| (format!("{:x}", m.id), m.name))
        .collect())
}

/// A member's name in a view row: the view's own, else the member list's; AP-only
/// members are marked.
fn name_of(
    row: &serde_json::Value,
    id: &str,
    names: &std::collections::BTreeMap<String, String>,
) -> String {
    let name = row["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .or_else(|| names.get(id).cloned())
        .unwrap_or_default();
    if row["role"] == "ap-only" {
        format!("{name} (AP-only)")
    } else {
        name
    }
}

/// The columns of `member ring`.
pub const RING_HEADERS: [&str; 5] = ["ID", "Name", "Share", "Alive", "Hints held"];

/// `concord member ring`: the `/v1/ap` view of the first endpoint that answers.
async fn ring(ctx: &Ctx) -> CtlResult<()> {
    let global = &ctx.global;
    let view = first_json(ctx, "/v1/ap").await?;
    if global.write_out == OutputFormat::Json {
        out(&format!("{view}\n"));
        return Ok(());
    }
    let names = member_names(ctx).await?;
    let bad = || CtlError::new("unexpected answer from /v1/ap");
    let mut rows = Vec::new();
    for m in view["ring"].as_array().ok_or_else(bad)? {
        let id = m["id"].as_str().ok_or_else(bad)?.to_string();
        rows.push(vec![
            id.clone(),
            name_of(m, &id, &names),
            format!("{:.1}%", 100.0 * m["share"].as_f64().ok_or_else(bad)?),
            m["alive"].as_bool().ok_or_else(bad)?.to_string(),
            m["hints_held_here"].as_u64().ok_or_else(bad)?.to_string(),
        ]);
    }
    out(&match global.write_out {
        OutputFormat::Table => printer::table(&RING_HEADERS, &rows),
        _ => printer::comma_rows(&rows),
    });
    Ok(())
}

/// One row per member, this member first (state `self`).
fn gossip_rows(
    view: &serde_json::Value,
    names: &std::collections::BTreeMap<String, String>,
) -> CtlResult<Vec<Vec<String>>> {
    let bad = || CtlError::new("unexpected answer from /v1/members");
    let members = view["members"].as_array().ok_or_else(bad)?;
    let mut rows = Vec::new();
    for (m, is_me) in std::iter::once((&view["me"], true)).chain(members.iter().map(|m| (m, false)))
    {
        let id = m["id"].as_str().ok_or_else(bad)?.to_string();
        let phi = match m["phi"].as_f64() {
            Some(phi) => format!("{phi:.2}"),
            None => "-".into(),
        };
        rows.push(vec![
            id.clone(),
            name_of(m, &id, names),
            if is_me {
                "self".into()
            } else {
                m["state"].as_str().ok_or_else(bad)?.to_string()
            },
            if is_me { "-".into() } else { phi },
            m["generation"].as_u64().ok_or_else(bad)?.to_string(),
            m["incarnation"].as_u64().ok_or_else(bad)?.to_string(),
            if is_me {
                "-".into()
            } else {
                format!("{:.1}s", m["for_secs"].as_f64().ok_or_else(bad)?)
            },
        ]);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members() -> Vec<pb::Member> {
        vec![
            pb::Member {
                id: 0x8e9e05c52164694d,
                name: "n1".into(),
                peer_ur_ls: vec!["http://127.0.0.1:2380".into()],
                client_ur_ls: vec!["http://127.0.0.1:2379".into()],
                is_learner: false,
            },
            pb::Member {
                id: 0x1234,
                name: String::new(),
                peer_ur_ls: vec!["http://127.0.0.1:12380".into()],
                client_ur_ls: vec![],
                is_learner: true,
            },
        ]
    }

    #[test]
    fn list_formats() {
        let r = pb::MemberListResponse {
            header: None,
            members: members(),
        };
        assert_eq!(
            format_list(&r, OutputFormat::Simple),
            "8e9e05c52164694d, started, n1, http://127.0.0.1:2380, http://127.0.0.1:2379, false\n\
             1234, unstarted, , http://127.0.0.1:12380, , true\n"
        );
        assert_eq!(
            format_list(&r, OutputFormat::Table),
            "+------------------+-----------+------+------------------------+-----------------------+------------+\n\
             |        ID        |  STATUS   | NAME |       PEER ADDRS       |     CLIENT ADDRS      | IS LEARNER |\n\
             +------------------+-----------+------+------------------------+-----------------------+------------+\n\
             | 8e9e05c52164694d |   started |   n1 |  http://127.0.0.1:2380 | http://127.0.0.1:2379 |      false |\n\
             |             1234 | unstarted |      | http://127.0.0.1:12380 |                       |       true |\n\
             +------------------+-----------+------+------------------------+-----------------------+------------+\n"
        );
        assert_eq!(
            format_list(&r, OutputFormat::Json),
            "{\"members\":[{\"ID\":10276657743932975437,\"name\":\"n1\",\"peerURLs\":[\"http://127.0.0.1:2380\"],\
             \"clientURLs\":[\"http://127.0.0.1:2379\"]},{\"ID\":4660,\"peerURLs\":[\"http://127.0.0.1:12380\"],\
             \"isLearner\":true}]}\n"
        );
    }

    #[test]
    fn add_env() {
        let env = added_env("n2", 0x1234, &["http://127.0.0.1:12380".into()], &members());
        assert_eq!(
            env,
            "\nCONCORD_NAME=\"n2\"\nCONCORD_INITIAL_CLUSTER=\"n1=http://127.0.0.1:2380,n2=http://127.0.0.1:12380\"\n\
             CONCORD_INITIAL_ADVERTISE_PEER_URLS=\"http://127.0.0.1:12380\"\nCONCORD_INITIAL_CLUSTER_STATE=\"existing\"\n"
        );
    }
}
