//! Member identities and attributes.
//!
//! * A member's id is derived, as etcd derives it, from its sorted peer URLs and the
//!   cluster token, so every founding member computes the same ids from
//!   `--initial-cluster`, and `member add` computes the id the new member will compute for
//!   itself from its own peer URLs.
//! * The cluster id is derived from the token alone, so a member joining later (which does
//!   not know the founding set) computes the same one. Different clusters on one network
//!   must use different tokens, exactly as etcd asks.
//! * Attributes (name, peer and client URLs) are replicated through Raft as
//!   [`Command::ClusterMeta`] entries under `member/<id>`: `member add` records the peer
//!   URLs, and each member publishes its name and client URLs once it sees a leader (etcd's
//!   "publish"). Who is a voter or a learner comes from Raft's configuration, never from
//!   these records.
//! * AP-only members (`--ap-only`) are in the same table with `ap_only` set, recorded when
//!   they register through a Raft member; they join the AP ring and gossip, not Raft.

use std::collections::BTreeMap;

use concord_proto::etcdserverpb as pb;
use concord_raft::{ConfState, NodeId};
use concord_storage::mvcc::types::Command;
use serde::{Deserialize, Serialize};

use crate::node::NodeHandle;

/// The replicated attributes of one member.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// Name; empty until the member has started and published it.
    #[serde(default)]
    pub name: String,
    /// Peer URLs.
    #[serde(default)]
    pub peer_urls: Vec<String>,
    /// Client URLs; empty until published.
    #[serde(default)]
    pub client_urls: Vec<String>,
    /// An AP-only member: it holds AP data and reads the cluster metadata from the Raft
    /// members, but is not in Raft's configuration (ignored for a member that is).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ap_only: bool,
}

/// The id of the member with `peer_urls` in the cluster named by `token` (never 0).
pub fn member_id(peer_urls: &[String], token: &str) -> NodeId {
    let mut urls: Vec<&str> = peer_urls.iter().map(|u| u.trim_end_matches('/')).collect();
    urls.sort_unstable();
    let mut buf = urls.join(",").into_bytes();
    buf.push(0);
    buf.extend_from_slice(token.as_bytes());
    NodeId(nonzero(xxhash_rust::xxh3::xxh3_64(&buf)))
}

/// The cluster id of the cluster named by `token` (never 0).
pub fn cluster_id(token: &str) -> u64 {
    let mut buf = b"concord-cluster\0".to_vec();
    buf.extend_from_slice(token.as_bytes());
    nonzero(xxhash_rust::xxh3::xxh3_64(&buf))
}

fn nonzero(x: u64) -> u64 {
    if x == 0 {
        1
    } else {
        x
    }
}

/// The member id recorded in `data_dir/member_id`, or `fresh` (then recorded, durably)
/// when the data dir has none yet.
pub fn load_or_store_id(data_dir: &std::path::Path, fresh: NodeId) -> Result<NodeId, String> {
    let path = data_dir.join("member_id");
    match std::fs::read_to_string(&path) {
        Ok(text) => u64::from_str_radix(text.trim(), 16)
            .ok()
            .map(NodeId)
            .filter(|id| !id.is_zero())
            .ok_or_else(|| format!("{} is damaged: {:?}", path.display(), text.trim())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let tmp = data_dir.join("member_id.tmp");
            let write = || -> std::io::Result<()> {
                use std::io::Write as _;
                let mut f = std::fs::File::create(&tmp)?;
                writeln!(f, "{fresh}")?;
                f.sync_all()?;
                std::fs::rename(&tmp, &path)?;
                std::fs::File::open(data_dir)?.sync_all()
            };
            write().map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            Ok(fresh)
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

const PREFIX: &str = "member/";

fn meta_key(id: NodeId) -> Vec<u8> {
    format!("{PREFIX}{:016x}", id.get()).into_bytes()
}

/// The command that sets member `id`'s record.
pub fn set_command(id: NodeId, record: &MemberRecord) -> Command {
    Command::ClusterMeta {
        key: meta_key(id),
        value: Some(serde_json::to_vec(record).unwrap_or_default()),
    }
}

/// The command that deletes member `id`'s record.
pub fn remove_command(id: NodeId) -> Command {
    Command::ClusterMeta {
        key: meta_key(id),
        value: None,
    }
}

/// This node's view of the members: replicated records, with the founding members'
/// attributes from the command line as a fallback for members that have not published.
#[derive(Debug)]
pub struct Members {
    node: NodeHandle,
    founding: BTreeMap<NodeId, MemberRecord>,
}

impl Members {
    /// A view for `node`; `founding` are the members known from the command line.
    pub(crate) fn new(node: NodeHandle, founding: BTreeMap<NodeId, MemberRecord>) -> Self {
        Self { node, founding }
    }

    /// The replicated records (undecodable ones are skipped with a warning).
    pub fn records(&self) -> BTreeMap<NodeId, MemberRecord> {
        let mut out = self.founding.clone();
        let entries = self
            .node
            .with_store(|s| s.cluster_meta())
            .unwrap_or_default();
        for (k, v) in entries {
            let Some(id) = std::str::from_utf8(&k)
                .ok()
                .and_then(|k| k.strip_prefix(PREFIX))
                .and_then(|h| u64::from_str_radix(h, 16).ok())
                .map(NodeId)
            else {
                continue;
            };
            match serde_json::from_slice::<MemberRecord>(&v) {
                Ok(r) => {
                    out.insert(id, r);
                }
                Err(e) => tracing::warn!(id = %id, error = %e, "undecodable member record skipped"),
            }
        }
        out
    }

    /// The current members (voters and learners of Raft's configuration) with their
    /// attributes, in id order.
    pub fn list(&self) -> Vec<pb::Member> {
        let cs = self.node.status().conf_state;
        self.list_for(&cs)
    }

    pub(crate) fn list_for(&self, cs: &ConfState) -> Vec<pb::Member> {
        let records = self.records();
        let mut ids: Vec<(NodeId, bool)> = Vec::new();
        for id in cs.voters.iter().chain(&cs.voters_outgoing) {
            ids.push((*id, false));
        }
        for id in cs.learners.iter().chain(&cs.learners_next) {
            ids.push((*id, true));
        }
        ids.sort_unstable();
        ids.dedup_by_key(|(id, _)| *id);
        ids.into_iter()
            .map(|(id, is_learner)| {
                let r = records.get(&id).cloned().unwrap_or_default();
                pb::Member {
                    id: id.get(),
                    name: r.name,
                    peer_ur_ls: r.peer_urls,
                    client_ur_ls: r.client_urls,
                    is_learner,
                }
            })
            .collect()
    }

    /// The AP-only members (records marked so, for ids outside Raft's configuration
    /// `cs`).
    pub fn ap_only(&self, cs: &ConfState) -> BTreeMap<NodeId, MemberRecord> {
        let in_conf = |id: &NodeId| {
            cs.voters
                .iter()
                .chain(&cs.voters_outgoing)
                .chain(&cs.learners)
                .chain(&cs.learners_next)
                .any(|m| m == id)
        };
        self.records()
            .into_iter()
            .filter(|(id, r)| r.ap_only && !in_conf(id))
            .collect()
    }

    /// The first client URL of member `id`, if known.
    pub fn client_url(&self, id: NodeId) -> Option<String> {
        self.records()
            .get(&id)
            .and_then(|r| r.client_urls.first().cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_id_survives_restarts_and_damage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_or_store_id(dir.path(), NodeId(7)).unwrap(), NodeId(7));
        assert_eq!(load_or_store_id(dir.path(), NodeId(9)).unwrap(), NodeId(7));
        std::fs::write(dir.path().join("member_id"), "zz").unwrap();
        assert!(load_or_store_id(dir.path(), NodeId(9))
            .unwrap_err()
            .contains("damaged"));
    }

    #[test]
    fn ids_ignore_url_order_and_depend_on_the_token() {
        let a = vec!["http://a:1".to_string(), "http://b:2".to_string()];
        let b = vec!["http://b:2/".to_string(), "http://a:1".to_string()];
        assert_eq!(member_id(&a, "t"), member_id(&b, "t"));
        assert_ne!(member_id(&a, "t"), member_id(&a, "u"));
        assert_ne!(cluster_id("t"), cluster_id("u"));
        assert!(!member_id(&a, "t").is_zero());
    }
}
