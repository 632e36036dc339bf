use super::*;

fn perm(kind: PermKind, key: &str, end: &[u8]) -> Perm {
    Perm {
        kind,
        key: key.as_bytes().to_vec(),
        range_end: end.to_vec(),
    }
}

/// A state with `root` (root role) and `alice` reading the prefix `/a/`.
fn state() -> AuthState {
    let mut s = AuthState::default();
    s.user_add(ROOT, Some(hash_password("rootpw").unwrap()))
        .unwrap();
    s.user_grant_role(ROOT, ROOT).unwrap();
    s.user_add("alice", Some(hash_password("alicepw").unwrap()))
        .unwrap();
    s.role_add("reader").unwrap();
    s.role_grant("reader", perm(PermKind::Read, "/a/", b"/a0"))
        .unwrap();
    s.user_grant_role("alice", "reader").unwrap();
    s.enable(new_secret().unwrap()).unwrap();
    s
}

#[test]
fn permissions_cover_keys_ranges_and_prefixes_exactly() {
    let one = perm(PermKind::Read, "k", b"");
    assert!(one.covers(b"k", b""));
    assert!(!one.covers(b"k2", b""));
    assert!(!one.covers(b"k", b"l"));
    let range = perm(PermKind::Read, "/a/", b"/a0");
    assert!(range.covers(b"/a/x", b""));
    assert!(range.covers(b"/a/", b"/a0"));
    assert!(range.covers(b"/a/x", b"/a/y"));
    assert!(!range.covers(b"/a/x", b"/b"));
    assert!(!range.covers(b"/b", b""));
    assert!(!range.covers(b"/a/", b"\0"));
    let from = perm(PermKind::Read, "m", b"\0");
    assert!(from.covers(b"z", b"\0"));
    assert!(from.covers(b"m", b""));
    assert!(!from.covers(b"a", b""));
}

#[test]
fn users_see_what_their_roles_grant_and_root_sees_everything() {
    let s = state();
    // The gathered lists answer as the state does.
    let c = Compiled::new(s.clone());
    for (user, key, end, write) in [
        ("alice", &b"/a/x"[..], &b""[..], false),
        ("alice", b"/a/x", b"", true),
        ("alice", b"/b/x", b"", false),
        ("alice", b"/", b"\0", false),
        (ROOT, b"/b/x", b"", true),
        ("nobody", b"/a/x", b"", false),
    ] {
        assert_eq!(
            c.permits(user, key, end, write),
            s.permits(user, key, end, write)
        );
    }
    assert!(s.permits("alice", b"/a/x", b"", false));
    assert!(!s.permits("alice", b"/a/x", b"", true), "read is not write");
    assert!(!s.permits("alice", b"/b/x", b"", false));
    assert!(!s.permits("alice", b"/", b"\0", false));
    assert!(s.permits(ROOT, b"/b/x", b"", true));
    assert!(!s.permits("nobody", b"/a/x", b"", false));
    assert!(s.is_admin(ROOT) && !s.is_admin("alice"));
}

#[test]
fn management_errors_are_etcds() {
    let mut s = state();
    assert_eq!(s.user_add("alice", None), Err(AuthError::UserExists));
    assert_eq!(s.user_add("", None), Err(AuthError::UserEmpty));
    assert!(matches!(
        s.user_add(&"x".repeat(MAX_NAME + 1), None),
        Err(AuthError::TooLong(..))
    ));
    assert_eq!(s.role_add("reader"), Err(AuthError::RoleExists));
    assert_eq!(
        s.user_grant_role("alice", "nope"),
        Err(AuthError::RoleNotFound)
    );
    assert_eq!(
        s.user_grant_role("nobody", "reader"),
        Err(AuthError::UserNotFound)
    );
    assert_eq!(
        s.user_revoke_role("alice", "writer"),
        Err(AuthError::RoleNotGranted)
    );
    assert_eq!(
        s.role_revoke("reader", b"/z", b""),
        Err(AuthError::PermNotGranted)
    );
    // While auth is on, root stays root.
    assert_eq!(s.user_delete(ROOT), Err(AuthError::InvalidManagement));
    assert_eq!(
        s.user_revoke_role(ROOT, ROOT),
        Err(AuthError::InvalidManagement)
    );
    assert_eq!(s.role_delete(ROOT), Err(AuthError::InvalidManagement));
    let mut fresh = AuthState::default();
    assert_eq!(fresh.enable("k".into()), Err(AuthError::RootNotExist));
    fresh.user_add(ROOT, None).unwrap();
    assert_eq!(fresh.enable("k".into()), Err(AuthError::RootRoleNotGranted));
}

#[test]
fn revoking_and_deleting_take_effect_on_the_next_check() {
    let mut s = state();
    assert!(s.permits("alice", b"/a/x", b"", false));
    s.role_revoke("reader", b"/a/", b"/a0").unwrap();
    assert!(!s.permits("alice", b"/a/x", b"", false));
    let mut s = state();
    s.role_delete("reader").unwrap();
    assert!(s.users["alice"].roles.is_empty(), "revoked from its users");
    assert!(!s.permits("alice", b"/a/x", b"", false));
}

#[test]
fn passwords_are_hashed_salted_and_checked() {
    let s = state();
    let hash = s.users["alice"].password.clone().unwrap();
    assert!(hash.starts_with("$argon2id$") && !hash.contains("alicepw"));
    assert_ne!(hash, hash_password("alicepw").unwrap(), "salted");
    s.authenticate("alice", "alicepw").unwrap();
    assert_eq!(s.authenticate("alice", "wrong"), Err(AuthError::AuthFailed));
    assert_eq!(s.authenticate("nobody", "x"), Err(AuthError::AuthFailed));
    let mut s = s;
    s.user_add("carol", None).unwrap();
    assert_eq!(s.authenticate("carol", "x"), Err(AuthError::NoPasswordUser));
    let long = "x".repeat(MAX_PASSWORD + 1);
    assert_eq!(s.authenticate("alice", &long), Err(AuthError::AuthFailed));
    let mut off = s.clone();
    off.enabled = false;
    assert_eq!(
        off.authenticate("alice", "alicepw"),
        Err(AuthError::NotEnabled)
    );
}

#[test]
fn tokens_are_refused_when_forged_expired_stale_or_orphaned() {
    let mut s = state();
    let t = issue_token(&s, "alice", 2_000);
    assert_eq!(verify_token(&s, &t, 1_000).unwrap(), "alice");
    assert_eq!(
        verify_token(&s, &t, 2_000),
        Err(AuthError::InvalidToken),
        "expired"
    );
    for garbage in ["", ".", "abc", "a.b", "YWxpY2UKOTk5OTk.AAAA", &t[1..]] {
        assert_eq!(
            verify_token(&s, garbage, 1_000),
            Err(AuthError::InvalidToken)
        );
    }
    // Another user's name in the payload breaks the signature.
    let (_, tag) = t.split_once('.').unwrap();
    let forged = format!("{}.{tag}", B64.encode("root\n2000"));
    assert_eq!(
        verify_token(&s, &forged, 1_000),
        Err(AuthError::InvalidToken)
    );
    // A new secret (auth disabled and enabled again) voids every token.
    let mut again = s.clone();
    again.secret = new_secret().unwrap();
    assert_eq!(
        verify_token(&again, &t, 1_000),
        Err(AuthError::InvalidToken)
    );
    s.user_delete("alice").unwrap();
    assert_eq!(verify_token(&s, &t, 1_000), Err(AuthError::InvalidToken));
}

#[test]
fn the_state_round_trips_through_json_without_passwords() {
    let s = state();
    let bytes = serde_json::to_vec(&s).unwrap();
    let text = String::from_utf8(bytes.clone()).unwrap();
    assert!(!text.contains("alicepw") && !text.contains("rootpw"));
    let back: AuthState = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(back, s);
}

/// The cost of one permission check for a user holding 1,000 roles of one permission
/// each, the allowed one last (the worst case: every role is looked at). A figure, not
/// an assertion: `cargo test --release -p concord-server --lib permission_check_cost --
/// --ignored --nocapture`.
#[test]
#[ignore = "prints a figure; run by hand"]
fn permission_check_cost_with_1000_roles() {
    let mut s = AuthState::default();
    s.user_add("u", None).unwrap();
    for i in 0..1000 {
        let role = format!("r{i:04}");
        s.role_add(&role).unwrap();
        s.role_grant(&role, perm(PermKind::Read, &format!("/k{i:04}/"), b""))
            .unwrap();
        s.user_grant_role("u", &role).unwrap();
    }
    s.role_grant("r0999", perm(PermKind::Read, "/hit/", b"/hit0"))
        .unwrap();
    let n = 20_000u32;
    let compiled = Compiled::new(s.clone());
    let start = std::time::Instant::now();
    let mut allowed = 0;
    for _ in 0..n {
        allowed += usize::from(compiled.permits("u", b"/hit/x", b"", false));
    }
    let per = start.elapsed() / n;
    assert_eq!(allowed, n as usize);
    let start = std::time::Instant::now();
    for _ in 0..n {
        allowed += usize::from(s.permits("u", b"/hit/x", b"", false));
    }
    let by_name = start.elapsed() / n;
    assert_eq!(allowed, 2 * n as usize);
    let one = {
        let mut t = AuthState::default();
        t.user_add("u", None).unwrap();
        t.role_add("r").unwrap();
        t.role_grant("r", perm(PermKind::Read, "/hit/", b"/hit0"))
            .unwrap();
        t.user_grant_role("u", "r").unwrap();
        let t = Compiled::new(t);
        let start = std::time::Instant::now();
        let mut hits = 0;
        for _ in 0..n {
            hits += usize::from(t.permits("u", b"/hit/x", b"", false));
        }
        assert_eq!(hits, n as usize);
        start.elapsed() / n
    };
    println!(
        "permission check: 1 role {one:?}, 1,000 roles {per:?} per request \
         (looking each role up by name: {by_name:?})"
    );
}
