//! Data-driven scenario tests for the classic Raft traps (scripts in `testdata/`).

mod interaction;

fn run(name: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(name);
    interaction::run_file(&path);
}

#[test]
fn figure_8() {
    run("figure_8.txt");
}

#[test]
fn stale_log_candidate_cannot_win() {
    run("stale_candidate.txt");
}

#[test]
fn prevote_rejoin_does_not_disrupt() {
    run("prevote_rejoin.txt");
}

#[test]
fn check_quorum_isolated_leader_steps_down() {
    run("check_quorum.txt");
}

#[test]
fn remove_leader_through_joint_consensus() {
    run("remove_leader_joint.txt");
}

#[test]
fn learner_never_votes_nor_counts() {
    run("learner.txt");
}

#[test]
fn read_index_across_leader_change() {
    run("read_index.txt");
}

#[test]
fn transfer_to_lagging_follower() {
    run("transfer_lagging.txt");
}

#[test]
fn snapshot_to_far_behind_follower() {
    run("snapshot_far_behind.txt");
}
