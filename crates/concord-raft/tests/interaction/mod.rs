//! A small interaction-test harness in the style of etcd-io/raft's `rafttest`: scripts in
//! `testdata/*.txt` drive an in-memory cluster command by command, and each command's
//! output is compared with the expected text after `----`.
//!
//! Script format: a command line (`cmd arg key=value ...`), optional further lines are not
//! used, then `----`, then the expected output, ended by a blank line. Lines starting with
//! `#` between blocks are comments. Set `CONCORD_RAFT_REWRITE=1` to rewrite the expected
//! outputs from the actual ones (review the diff before committing it).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use concord_raft::{
    ConfChange, ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfState, Config, Entry,
    EntryKind, MemStorage, Message, MessageType, NodeId, RawNode, ReadOnlyOption, SnapshotStatus,
    StateRole, Storage,
};

struct Node {
    raw: RawNode<MemStorage>,
    disk: MemStorage,
    conf: ConfState,
    applied: u64,
    election_tick: u32,
    cfg: Config,
}

#[derive(Default)]
pub struct Env {
    nodes: BTreeMap<NodeId, Node>,
    inbox: BTreeMap<NodeId, Vec<Message>>,
    blocked: BTreeSet<(NodeId, NodeId)>,
}

fn fmt_entry(e: &Entry) -> String {
    match e.kind {
        EntryKind::Normal if e.data.is_empty() => format!("{}/{} noop", e.index, e.term),
        EntryKind::Normal => format!(
            "{}/{} {}",
            e.index,
            e.term,
            String::from_utf8_lossy(&e.data)
        ),
        EntryKind::ConfChange => match ConfChange::decode(&e.data) {
            Ok(cc) => format!("{}/{} conf({})", e.index, e.term, fmt_cc(&cc)),
            Err(err) => format!("{}/{} conf(invalid: {err})", e.index, e.term),
        },
    }
}

fn fmt_cc(cc: &ConfChange) -> String {
    if cc.changes.is_empty() {
        return "leave-joint".into();
    }
    let mut parts: Vec<String> = cc
        .changes
        .iter()
        .map(|c| {
            let k = match c.kind {
                ConfChangeType::AddNode => "v",
                ConfChangeType::AddLearner => "l",
                ConfChangeType::RemoveNode => "r",
            };
            format!("{k}{}", c.node_id)
        })
        .collect();
    if cc.transition != ConfChangeTransition::Auto {
        parts.push(format!("{:?}", cc.transition).to_lowercase());
    }
    parts.join(" ")
}

fn fmt_ids(v: &[NodeId]) -> String {
    v.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn fmt_conf(cs: &ConfState) -> String {
    let mut s = format!("voters=({})", fmt_ids(&cs.voters));
    if !cs.voters_outgoing.is_empty() {
        write!(s, "&&({})", fmt_ids(&cs.voters_outgoing)).ok();
    }
    if !cs.learners.is_empty() {
        write!(s, " learners=({})", fmt_ids(&cs.learners)).ok();
    }
    if !cs.learners_next.is_empty() {
        write!(s, " learners_next=({})", fmt_ids(&cs.learners_next)).ok();
    }
    if cs.auto_leave {
        s.push_str(" autoleave");
    }
    s
}

pub fn fmt_msg(m: &Message) -> String {
    let mut s = format!("{}->{} {:?} term={}", m.from, m.to, m.msg_type, m.term);
    match m.msg_type {
        MessageType::Vote | MessageType::PreVote => {
            write!(s, " last={}/{}", m.index, m.log_term).ok();
            if !m.context.is_empty() {
                s.push_str(" transfer");
            }
        }
        MessageType::VoteResp | MessageType::PreVoteResp => {
            s.push_str(if m.reject { " reject" } else { " grant" });
        }
        MessageType::Append => {
            write!(s, " prev={}/{} commit={}", m.index, m.log_term, m.commit).ok();
            if !m.entries.is_empty() {
                let ents: Vec<String> = m.entries.iter().map(fmt_entry).collect();
                write!(s, " [{}]", ents.join(", ")).ok();
            }
        }
        MessageType::AppendResp => {
            if m.reject {
                write!(
                    s,
                    " reject index={} hint={}/{}",
                    m.index, m.reject_hint, m.log_term
                )
                .ok();
            } else {
                write!(s, " index={}", m.index).ok();
            }
        }
        MessageType::Heartbeat => {
            write!(s, " commit={}", m.commit).ok();
            if !m.context.is_empty() {
                write!(s, " ctx={}", String::from_utf8_lossy(&m.context)).ok();
            }
        }
        MessageType::HeartbeatResp | MessageType::ReadIndex if !m.context.is_empty() => {
            write!(s, " ctx={}", String::from_utf8_lossy(&m.context)).ok();
        }
        MessageType::ReadIndexResp => {
            write!(
                s,
                " index={} ctx={}",
                m.index,
                String::from_utf8_lossy(&m.context)
            )
            .ok();
        }
        MessageType::Snapshot => {
            if let Some(snap) = &m.snapshot {
                let md = &snap.metadata;
                write!(
                    s,
                    " snap={}/{} {}",
                    md.index,
                    md.term,
                    fmt_conf(&md.conf_state)
                )
                .ok();
            }
        }
        MessageType::Propose => {
            let ents: Vec<String> = m.entries.iter().map(fmt_entry).collect();
            write!(s, " [{}]", ents.join(", ")).ok();
        }
        _ => {}
    }
    s
}

/// Parsed command: name, positional args, key=value args.
pub struct Cmd {
    pub name: String,
    pub args: Vec<String>,
    pub kv: BTreeMap<String, String>,
}

impl Cmd {
    pub fn parse(line: &str) -> Self {
        let mut it = line.split_whitespace();
        let name = it.next().unwrap_or_default().to_string();
        let mut args = Vec::new();
        let mut kv = BTreeMap::new();
        for a in it {
            match a.split_once('=') {
                Some((k, v)) => {
                    kv.insert(k.to_string(), v.to_string());
                }
                None => args.push(a.to_string()),
            }
        }
        Self { name, args, kv }
    }

    fn ids(&self) -> Vec<NodeId> {
        self.args
            .iter()
            .filter_map(|a| a.parse().ok().map(NodeId))
            .collect()
    }

    fn id(&self, i: usize) -> NodeId {
        self.args
            .get(i)
            .and_then(|a| a.parse().ok().map(NodeId))
            .unwrap_or_else(|| panic!("{}: missing node id", self.name))
    }

    fn flag(&self, k: &str, default: bool) -> bool {
        self.kv.get(k).map_or(default, |v| v == "true")
    }

    fn num(&self, k: &str, default: u64) -> u64 {
        self.kv
            .get(k)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    fn list(&self, k: &str) -> Vec<NodeId> {
        self.kv
            .get(k)
            .map(|v| {
                v.split(',')
                    .filter_map(|x| x.parse().ok().map(NodeId))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Env {
    pub fn handle(&mut self, cmd: &Cmd) -> String {
        let mut out = String::new();
        match cmd.name.as_str() {
            "add-nodes" => self.add_nodes(cmd, &mut out),
            "campaign" => {
                let id = cmd.id(0);
                if let Err(e) = self.node(id).raw.campaign() {
                    writeln!(out, "error: {e}").ok();
                }
            }
            "tick-heartbeat" => self.node(cmd.id(0)).raw.tick(),
            "tick" => {
                let n = cmd.args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1);
                for _ in 0..n {
                    self.node(cmd.id(0)).raw.tick();
                }
            }
            "tick-election" => self.tick_election(cmd.id(0)),
            "propose" => {
                let data = cmd.args.get(1).cloned().unwrap_or_default().into_bytes();
                if let Err(e) = self.node(cmd.id(0)).raw.propose(data) {
                    writeln!(out, "error: {e}").ok();
                }
            }
            "propose-conf-change" => {
                let cc = parse_cc(cmd);
                if let Err(e) = self.node(cmd.id(0)).raw.propose_conf_change(&cc) {
                    writeln!(out, "error: {e}").ok();
                }
            }
            "read-index" => {
                let ctx = cmd.args.get(1).cloned().unwrap_or_default().into_bytes();
                if let Err(e) = self.node(cmd.id(0)).raw.read_index(ctx) {
                    writeln!(out, "error: {e}").ok();
                }
            }
            "transfer-leader" => {
                let to = cmd.id(1);
                self.node(cmd.id(0)).raw.transfer_leader(to);
            }
            "process-ready" => {
                for id in self.select(cmd) {
                    self.process_ready(id, &mut out, true);
                }
            }
            "deliver-msgs" => {
                for id in self.select(cmd) {
                    self.deliver(id, &mut out, true);
                }
            }
            "stabilize" => self.stabilize(cmd, &mut out),
            "partition" => {
                // partition 1 2 | 3 4 5: cut every link across the bar, both ways.
                self.blocked.clear();
                let text = cmd.args.join(" ");
                let groups: Vec<Vec<NodeId>> = text
                    .split('|')
                    .map(|g| {
                        g.split_whitespace()
                            .filter_map(|x| x.parse().ok().map(NodeId))
                            .collect()
                    })
                    .collect();
                for (i, a) in groups.iter().enumerate() {
                    for (j, b) in groups.iter().enumerate() {
                        if i != j {
                            for &x in a {
                                for &y in b {
                                    self.blocked.insert((x, y));
                                }
                            }
                        }
                    }
                }
            }
            "cut" => {
                // cut 1 2: drop messages from 1 to 2 only (asymmetric).
                self.blocked.insert((cmd.id(0), cmd.id(1)));
            }
            "isolate" => {
                let id = cmd.id(0);
                let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
                for o in ids {
                    if o != id {
                        self.blocked.insert((id, o));
                        self.blocked.insert((o, id));
                    }
                }
            }
            "heal" => self.blocked.clear(),
            "restart" => {
                // Crash and restart from the durable state (the harness persists every
                // Ready before advancing, so nothing is lost but volatile state).
                let id = cmd.id(0);
                let n = self.node(id);
                let old = n.raw.status();
                let snap = n.disk.snapshot(0).unwrap_or_default();
                let mut cfg = n.cfg.clone();
                cfg.applied = snap.metadata.index;
                n.applied = snap.metadata.index;
                n.conf = snap.metadata.conf_state.clone();
                n.raw = RawNode::new(&cfg, n.disk.clone())
                    .unwrap_or_else(|e| panic!("restart {id}: {e}"));
                self.inbox.remove(&id);
                let _ = old;
            }
            "status" => {
                for id in self.select(cmd) {
                    self.status(id, &mut out);
                }
            }
            "raft-log" => {
                let n = self.node(cmd.id(0));
                let first = n.raw.first_index();
                let last = n.raw.last_index();
                match n.raw.log_slice(first, last + 1) {
                    Ok(ents) if ents.is_empty() => {
                        writeln!(out, "log is empty: first index={first}").ok()
                    }
                    Ok(ents) => ents
                        .iter()
                        .try_for_each(|e| writeln!(out, "{}", fmt_entry(e)))
                        .ok(),
                    Err(e) => writeln!(out, "error: {e}").ok(),
                };
            }
            "compact" => {
                // compact <id> <index>: snapshot at the applied index, drop entries <= index.
                let id = cmd.id(0);
                let upto = cmd.id(1).get();
                let n = self.node(id);
                let applied = n.applied;
                let conf = n.conf.clone();
                if let Err(e) = n.disk.create_snapshot(applied, conf, Vec::new()) {
                    writeln!(out, "error: {e}").ok();
                }
                if let Err(e) = n.disk.compact(upto) {
                    writeln!(out, "error: {e}").ok();
                }
                writeln!(out, "first index={}", n.disk.first_index().unwrap_or(0)).ok();
            }
            other => panic!("unknown command {other}"),
        }
        out
    }

    fn node(&mut self, id: NodeId) -> &mut Node {
        self.nodes
            .get_mut(&id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    fn select(&self, cmd: &Cmd) -> Vec<NodeId> {
        let ids = cmd.ids();
        if ids.is_empty() {
            self.nodes.keys().copied().collect()
        } else {
            ids
        }
    }

    fn add_nodes(&mut self, cmd: &Cmd, out: &mut String) {
        let n = cmd.id(0);
        let cs = ConfState {
            voters: cmd.list("voters"),
            learners: cmd.list("learners"),
            ..ConfState::default()
        };
        let first = self.nodes.keys().last().map_or(0, |id| id.get()) + 1;
        for id in (first..first + n.get()).map(NodeId) {
            let founding = cs.voters.contains(&id) || cs.learners.contains(&id);
            let disk = if founding {
                MemStorage::bootstrap(cs.clone())
            } else {
                MemStorage::new()
            };
            let mut cfg = Config::new(id);
            cfg.pre_vote = cmd.flag("prevote", true);
            cfg.check_quorum = cmd.flag("checkquorum", true);
            if cmd.flag("lease", false) {
                cfg.read_only_option = ReadOnlyOption::LeaseBased;
            }
            cfg.max_size_per_msg_bytes = cmd.num("max-size", 1 << 20);
            cfg.max_inflight_msgs = cmd.num("inflight", 256) as usize;
            cfg.applied = if founding { 1 } else { 0 };
            let election_tick = cfg.election_tick;
            let raw =
                RawNode::new(&cfg, disk.clone()).unwrap_or_else(|e| panic!("new node {id}: {e}"));
            let conf = if founding {
                cs.clone()
            } else {
                ConfState::default()
            };
            self.nodes.insert(
                id,
                Node {
                    raw,
                    disk,
                    conf,
                    applied: cfg.applied,
                    election_tick,
                    cfg: cfg.clone(),
                },
            );
            writeln!(
                out,
                "node {id}: {}",
                fmt_conf(&self.nodes[&id].raw.conf_state())
            )
            .ok();
        }
    }

    fn tick_election(&mut self, id: NodeId) {
        let n = self.node(id);
        let before = (n.raw.soft_state().role, n.raw.hard_state().term);
        if before.0 == StateRole::Leader {
            for _ in 0..n.election_tick {
                n.raw.tick();
            }
            return;
        }
        for _ in 0..2 * n.election_tick {
            n.raw.tick();
            if (n.raw.soft_state().role, n.raw.hard_state().term) != before || n.raw.has_ready() {
                break;
            }
        }
    }

    fn status(&mut self, id: NodeId, out: &mut String) {
        let n = self.node(id);
        let st = n.raw.status();
        writeln!(
            out,
            "{id}: {:?} term={} leader={} commit={} applied={} last={} {}",
            st.soft_state.role,
            st.hard_state.term,
            st.soft_state.leader_id.map_or(0, NodeId::get),
            st.hard_state.commit,
            st.applied,
            n.raw.last_index(),
            fmt_conf(&n.raw.conf_state())
        )
        .ok();
        if let Some(prs) = st.progress {
            for (pid, pr) in prs {
                writeln!(
                    out,
                    "  {pid}: {:?} match={} next={}{}",
                    pr.state,
                    pr.matched,
                    pr.next,
                    if pr.is_learner { " learner" } else { "" }
                )
                .ok();
            }
        }
    }

    /// Handles one Ready of `id` the way a runtime must: persist, send, apply, advance.
    fn process_ready(&mut self, id: NodeId, out: &mut String, verbose: bool) -> bool {
        let n = self.node(id);
        if !n.raw.has_ready() {
            return false;
        }
        let rd = n.raw.ready().unwrap_or_else(|e| panic!("ready {id}: {e}"));
        if let Some(ss) = rd.soft_state {
            writeln!(
                out,
                "{id} is {:?} (leader={}) term={}",
                ss.role,
                ss.leader_id.map_or(0, NodeId::get),
                n.raw.hard_state().term
            )
            .ok();
        }
        if let Some(s) = &rd.snapshot {
            n.disk
                .apply_snapshot(s.clone())
                .unwrap_or_else(|e| panic!("apply snapshot: {e}"));
            n.applied = s.metadata.index;
            n.conf = s.metadata.conf_state.clone();
            writeln!(
                out,
                "{id} installed snapshot {}/{} {}",
                s.metadata.index,
                s.metadata.term,
                fmt_conf(&n.conf)
            )
            .ok();
        }
        n.disk
            .append(&rd.entries)
            .unwrap_or_else(|e| panic!("append: {e}"));
        if let Some(hs) = rd.hard_state {
            n.disk.set_hard_state(hs);
        }
        let mut msgs: Vec<Message> = rd.messages.clone();
        msgs.extend(rd.persisted_messages.iter().cloned());
        for e in &rd.committed_entries {
            if e.index <= n.applied {
                continue;
            }
            n.applied = e.index;
            if e.kind == EntryKind::ConfChange {
                if let Ok(cc) = ConfChange::decode(&e.data) {
                    match n.raw.apply_conf_change(&cc) {
                        Ok(cs) => n.conf = cs,
                        Err(err) => {
                            writeln!(out, "{id} rejected conf change: {err}").ok();
                        }
                    }
                }
            }
            writeln!(out, "{id} applied {}", fmt_entry(e)).ok();
        }
        for rs in &rd.read_states {
            writeln!(
                out,
                "{id} read ctx={} index={}",
                String::from_utf8_lossy(&rs.request_ctx),
                rs.index
            )
            .ok();
        }
        n.raw.advance(rd);
        for m in msgs {
            if self.blocked.contains(&(m.from, m.to)) || !self.nodes.contains_key(&m.to) {
                if verbose {
                    writeln!(out, "dropped {}", fmt_msg(&m)).ok();
                }
                if m.msg_type == MessageType::Snapshot {
                    self.node(id)
                        .raw
                        .report_snapshot(m.to, SnapshotStatus::Failure);
                }
                continue;
            }
            self.inbox.entry(m.to).or_default().push(m);
        }
        true
    }

    fn deliver(&mut self, id: NodeId, out: &mut String, verbose: bool) -> bool {
        let msgs = self.inbox.remove(&id).unwrap_or_default();
        if msgs.is_empty() {
            return false;
        }
        for m in msgs {
            if verbose {
                writeln!(out, "{}", fmt_msg(&m)).ok();
            }
            let (from, ty) = (m.from, m.msg_type);
            if let Err(e) = self.node(id).raw.step(m) {
                writeln!(out, "{id} step error: {e}").ok();
            }
            if ty == MessageType::Snapshot {
                if let Some(n) = self.nodes.get_mut(&from) {
                    n.raw.report_snapshot(id, SnapshotStatus::Finish);
                }
            }
        }
        true
    }

    fn stabilize(&mut self, cmd: &Cmd, out: &mut String) {
        let ids = self.select(cmd);
        let verbose = cmd.args.iter().any(|a| a == "verbose");
        for _ in 0..1000 {
            let mut progress = false;
            for &id in &ids {
                progress |= self.process_ready(id, out, verbose);
            }
            for &id in &ids {
                progress |= self.deliver(id, out, verbose);
            }
            if !progress {
                return;
            }
        }
        panic!("stabilize did not converge");
    }
}

fn parse_cc(cmd: &Cmd) -> ConfChange {
    let transition = match cmd.kv.get("transition").map(String::as_str) {
        Some("implicit") => ConfChangeTransition::Implicit,
        Some("explicit") => ConfChangeTransition::Explicit,
        _ => ConfChangeTransition::Auto,
    };
    let changes = cmd.args[1..]
        .iter()
        .map(|a| {
            let (k, id) = a.split_at(1);
            let kind = match k {
                "v" => ConfChangeType::AddNode,
                "l" => ConfChangeType::AddLearner,
                "r" => ConfChangeType::RemoveNode,
                _ => panic!("bad change {a}"),
            };
            ConfChangeSingle {
                kind,
                node_id: NodeId(id.parse().unwrap_or_else(|_| panic!("bad id in {a}"))),
            }
        })
        .collect();
    ConfChange {
        transition,
        changes,
        context: Vec::new(),
    }
}

/// Runs one script file, comparing (or with `CONCORD_RAFT_REWRITE=1`, rewriting) outputs.
pub fn run_file(path: &std::path::Path) {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let rewrite = std::env::var("CONCORD_RAFT_REWRITE").is_ok();
    let mut env = Env::default();
    let mut rewritten = String::new();
    let mut lines = text.lines().peekable();
    let mut failures = Vec::new();
    while let Some(line) = lines.next() {
        if line.trim().is_empty() || line.starts_with('#') {
            rewritten.push_str(line);
            rewritten.push('\n');
            continue;
        }
        let cmd_line = line;
        let sep = lines.next().unwrap_or_default();
        assert_eq!(
            sep,
            "----",
            "{}: expected ---- after `{cmd_line}`",
            path.display()
        );
        let mut expected = String::new();
        while let Some(l) = lines.peek() {
            if l.is_empty() {
                break;
            }
            expected.push_str(l);
            expected.push('\n');
            lines.next();
        }
        let actual = env.handle(&Cmd::parse(cmd_line));
        let shown = if actual.is_empty() {
            "ok\n".to_string()
        } else {
            actual
        };
        if shown != expected {
            failures.push(format!(
                "`{cmd_line}`\n--- expected\n{expected}--- actual\n{shown}"
            ));
        }
        rewritten.push_str(cmd_line);
        rewritten.push_str("\n----\n");
        rewritten.push_str(&shown);
    }
    if rewrite {
        std::fs::write(path, rewritten).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        return;
    }
    assert!(
        failures.is_empty(),
        "{}:\n{}",
        path.display(),
        failures.join("\n")
    );
}
