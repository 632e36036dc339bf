//! etcd's authentication and role-based access control: the replicated state (users,
//! roles, permissions, whether auth is on, the auth revision), tokens, and the checks.
//!
//! # Where the state lives
//!
//! [`AuthState`] is one entry of the cluster metadata table (key [`META_KEY`], JSON),
//! replicated by the Raft group like the member list, and so part of every snapshot. A
//! change reads the entry, edits a copy and proposes it with
//! [`Command::ClusterMetaCas`] expecting the bytes it read: a concurrent change on another
//! member makes the proposal fail and the edit is redone on the new state, so no update is
//! lost ([`AuthStore::mutate`]). Every change raises the auth revision by one.
//!
//! # Guarantees
//!
//! 1. Passwords are stored only as Argon2id hashes (PHC strings, salted); the hash is
//!    computed on the member that receives the request, so no password enters the Raft
//!    log, a snapshot or a log line. Verification compares in constant time.
//! 2. Tokens are HMAC-SHA256 signed by a secret made at the first `AuthEnable` and kept
//!    in the replicated state: any member verifies any member's token. A token names its
//!    user and expiry; it is refused once expired, once the user is deleted, and once
//!    auth is disabled and enabled again (a new secret).
//! 3. Checks read the state as applied on the member serving the request: a revoked
//!    permission or a deleted user stops working there as soon as the change is applied
//!    (on the member that made the change, before the change is answered).
//! 4. A write (`Put`, `DeleteRange`, `Txn`) is checked twice, as etcd checks it: at the
//!    member that receives it, which proposes it as [`Command::Authorized`] with the auth
//!    revision it checked at, and again at apply, on every replica alike ([`AuthGate`]):
//!    if any change to the auth state was applied in between, the write is refused with
//!    `etcdserver: revision of auth store is old` (a write that named no user, with
//!    `etcdserver: user name is empty`, once auth is on) and changes nothing. So a write
//!    received by a member that had not yet applied a revoke (or an `AuthEnable`) cannot
//!    pass on the older view.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use concord_storage::errors::RequestError;
use concord_storage::mvcc::types::{
    Command, DeleteRangeRequest, PutRequest, RequestOp, TxnRequest,
};
use serde::{Deserialize, Serialize};
use tonic::Status;

use crate::error::KvError;
use crate::node::NodeHandle;

/// The cluster metadata key holding the [`AuthState`].
pub const META_KEY: &[u8] = b"auth";

/// Longest user or role name accepted (bytes).
pub const MAX_NAME: usize = 256;

/// Longest password accepted (bytes): hashing is the expensive part of a request.
pub const MAX_PASSWORD: usize = 1024;

/// The gRPC metadata key carrying the token (etcd's).
pub const TOKEN_METADATA: &str = "token";

/// The request header carrying the common name of the caller's verified client
/// certificate. Set only by the client listener ([`set_cert_user`]), which removes any
/// the client sent: a client cannot name itself with it.
pub const CERT_USER_HEADER: &str = "concord-cert-user";

/// Replaces whatever `concord-cert-user` header a request came with by the name of its
/// connection's verified client certificate (none: no header).
pub fn set_cert_user(headers: &mut axum::http::HeaderMap, name: Option<&str>) {
    headers.remove(CERT_USER_HEADER);
    if let Some(value) = name.and_then(|n| axum::http::HeaderValue::from_str(n).ok()) {
        headers.insert(CERT_USER_HEADER, value);
    }
}

/// The name of the administrator user and role.
pub const ROOT: &str = "root";

/// What a permission allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PermKind {
    /// Range and watch.
    Read,
    /// Put and delete.
    Write,
    /// Both.
    ReadWrite,
}

impl PermKind {
    /// etcd's `authpb.Permission.Type` number.
    pub fn to_pb(self) -> i32 {
        match self {
            PermKind::Read => 0,
            PermKind::Write => 1,
            PermKind::ReadWrite => 2,
        }
    }

    /// From etcd's number.
    pub fn from_pb(n: i32) -> Option<PermKind> {
        match n {
            0 => Some(PermKind::Read),
            1 => Some(PermKind::Write),
            2 => Some(PermKind::ReadWrite),
            _ => None,
        }
    }

    fn allows(self, write: bool) -> bool {
        match self {
            PermKind::ReadWrite => true,
            PermKind::Read => !write,
            PermKind::Write => write,
        }
    }
}

/// One permission: a key (`range_end` empty), a range `[key, range_end)`, or every key
/// from `key` on (`range_end` = `\0`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Perm {
    /// Read, write or both.
    pub kind: PermKind,
    /// The key, or the range's start.
    pub key: Vec<u8>,
    /// The range's end (exclusive); empty for one key; `[0]` for no end.
    pub range_end: Vec<u8>,
}

impl Perm {
    /// Whether this permission covers `[key, range_end)` (etcd's request encoding).
    fn covers(&self, key: &[u8], range_end: &[u8]) -> bool {
        let unbounded = |end: &[u8]| end == [0];
        if self.range_end.is_empty() {
            return range_end.is_empty() && key == self.key.as_slice();
        }
        if key < self.key.as_slice() {
            return false;
        }
        if unbounded(&self.range_end) {
            return true;
        }
        if range_end.is_empty() {
            return key < self.range_end.as_slice();
        }
        !unbounded(range_end) && range_end <= self.range_end.as_slice()
    }
}

/// A user.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The Argon2id hash (PHC string); `None` for a user added with `--no-password`
    /// (it cannot authenticate with a password).
    pub password: Option<String>,
    /// Granted roles.
    pub roles: BTreeSet<String>,
}

/// A role.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    /// Its permissions, in the order granted.
    pub perms: Vec<Perm>,
}

/// The replicated authentication state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthState {
    /// Whether requests are checked.
    pub enabled: bool,
    /// Raised by every change (etcd's auth revision).
    pub revision: u64,
    /// The token-signing secret (hex), made at `AuthEnable`; empty before.
    pub secret: String,
    /// Users by name.
    pub users: BTreeMap<String, User>,
    /// Roles by name.
    pub roles: BTreeMap<String, Role>,
}

/// Why an auth request or check failed; each maps to etcd's error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Authentication is off.
    #[error("etcdserver: authentication is not enabled")]
    NotEnabled,
    /// A request without a token while auth is on, or an empty name.
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    /// No such user.
    #[error("etcdserver: user name not found")]
    UserNotFound,
    /// The user exists.
    #[error("etcdserver: user name already exists")]
    UserExists,
    /// No such role.
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    /// The role exists.
    #[error("etcdserver: role name already exists")]
    RoleExists,
    /// The role is not the user's.
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    /// The role has no such permission.
    #[error("etcdserver: permission is not granted to the role")]
    PermNotGranted,
    /// Wrong user or password.
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    /// A password given for a user added with `--no-password` (etcd's text and code).
    #[error("auth: authentication failed, password was given for no password user")]
    NoPasswordUser,
    /// `AuthEnable` without a `root` user.
    #[error("etcdserver: root user does not exist")]
    RootNotExist,
    /// `AuthEnable` with a `root` user lacking the `root` role.
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotGranted,
    /// The `root` role cannot lose the `root` user's grant while auth is on, etc.
    #[error("etcdserver: invalid auth management")]
    InvalidManagement,
    /// A garbage, expired or stale token.
    #[error("etcdserver: invalid auth token")]
    InvalidToken,
    /// The user may not do this.
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    /// A name or password over its limit.
    #[error("concord: {0} is longer than {1} bytes")]
    TooLong(&'static str, usize),
    /// A permission with a bad type.
    #[error("etcdserver: invalid permission type")]
    BadPermission,
    /// The change could not be replicated.
    #[error("{0}")]
    Cluster(String),
}

impl AuthError {
    /// The gRPC status etcd answers with.
    pub fn status(&self) -> Status {
        let text = self.to_string();
        match self {
            AuthError::NotEnabled | AuthError::RootNotExist | AuthError::RootRoleNotGranted => {
                Status::failed_precondition(text)
            }
            AuthError::UserNotFound | AuthError::RoleNotFound => Status::failed_precondition(text),
            AuthError::UserExists | AuthError::RoleExists => Status::failed_precondition(text),
            AuthError::RoleNotGranted | AuthError::PermNotGranted => {
                Status::failed_precondition(text)
            }
            AuthError::InvalidManagement => Status::invalid_argument(text),
            AuthError::NoPasswordUser => Status::unknown(text),
            AuthError::InvalidToken => Status::unauthenticated(text),
            AuthError::PermissionDenied => Status::permission_denied(text),
            AuthError::UserEmpty
            | AuthError::AuthFailed
            | AuthError::TooLong(..)
            | AuthError::BadPermission => Status::invalid_argument(text),
            AuthError::Cluster(_) => Status::unavailable(text),
        }
    }
}

fn check_name(kind: &'static str, name: &str) -> Result<(), AuthError> {
    if name.is_empty() {
        return Err(AuthError::UserEmpty);
    }
    if name.len() > MAX_NAME {
        return Err(AuthError::TooLong(kind, MAX_NAME));
    }
    Ok(())
}

/// The Argon2id hash of `password` (a fresh salt each time).
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
    if password.len() > MAX_PASSWORD {
        return Err(AuthError::TooLong("the password", MAX_PASSWORD));
    }
    let salt = SaltString::generate(&mut OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Cluster(format!("password hashing failed: {e}")))
}

/// Whether `password` matches `hash` (constant-time comparison).
fn verify_password(password: &str, hash: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    if password.len() > MAX_PASSWORD {
        return false;
    }
    PasswordHash::new(hash)
        .map(|h| {
            argon2::Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

impl AuthState {
    fn user_mut(&mut self, name: &str) -> Result<&mut User, AuthError> {
        self.users.get_mut(name).ok_or(AuthError::UserNotFound)
    }

    /// `UserAdd` (`password_hash` from [`hash_password`], or `None` for no password).
    pub fn user_add(&mut self, name: &str, password_hash: Option<String>) -> Result<(), AuthError> {
        check_name("the user name", name)?;
        if self.users.contains_key(name) {
            return Err(AuthError::UserExists);
        }
        self.users.insert(
            name.to_string(),
            User {
                password: password_hash,
                roles: BTreeSet::new(),
            },
        );
        Ok(())
    }

    /// `UserDelete`.
    pub fn user_delete(&mut self, name: &str) -> Result<(), AuthError> {
        if self.enabled && name == ROOT {
            return Err(AuthError::InvalidManagement);
        }
        self.users
            .remove(name)
            .map(|_| ())
            .ok_or(AuthError::UserNotFound)
    }

    /// `UserChangePassword`.
    pub fn user_change_password(&mut self, name: &str, hash: String) -> Result<(), AuthError> {
        self.user_mut(name)?.password = Some(hash);
        Ok(())
    }

    /// `UserGrantRole`.
    pub fn user_grant_role(&mut self, name: &str, role: &str) -> Result<(), AuthError> {
        if role != ROOT && !self.roles.contains_key(role) {
            return Err(AuthError::RoleNotFound);
        }
        self.user_mut(name)?.roles.insert(role.to_string());
        Ok(())
    }

    /// `UserRevokeRole`.
    pub fn user_revoke_role(&mut self, name: &str, role: &str) -> Result<(), AuthError> {
        if self.enabled && name == ROOT && role == ROOT {
            return Err(AuthError::InvalidManagement);
        }
        if self.user_mut(name)?.roles.remove(role) {
            Ok(())
        } else {
            Err(AuthError::RoleNotGranted)
        }
    }

    /// `RoleAdd`.
    pub fn role_add(&mut self, name: &str) -> Result<(), AuthError> {
        check_name("the role name", name)?;
        if self.roles.contains_key(name) {
            return Err(AuthError::RoleExists);
        }
        self.roles.insert(name.to_string(), Role::default());
        Ok(())
    }

    /// `RoleDelete`: also revoked from every user.
    pub fn role_delete(&mut self, name: &str) -> Result<(), AuthError> {
        if self.enabled && name == ROOT {
            return Err(AuthError::InvalidManagement);
        }
        self.roles.remove(name).ok_or(AuthError::RoleNotFound)?;
        for user in self.users.values_mut() {
            user.roles.remove(name);
        }
        Ok(())
    }

    /// `RoleGrantPermission` (a permission on the same key and range replaces the old).
    pub fn role_grant(&mut self, name: &str, perm: Perm) -> Result<(), AuthError> {
        let role = self.roles.get_mut(name).ok_or(AuthError::RoleNotFound)?;
        match role
            .perms
            .iter_mut()
            .find(|p| p.key == perm.key && p.range_end == perm.range_end)
        {
            Some(p) => p.kind = perm.kind,
            None => role.perms.push(perm),
        }
        Ok(())
    }

    /// `RoleRevokePermission` of the permission on `key`..`range_end`.
    pub fn role_revoke(
        &mut self,
        name: &str,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(), AuthError> {
        let role = self.roles.get_mut(name).ok_or(AuthError::RoleNotFound)?;
        let before = role.perms.len();
        role.perms
            .retain(|p| !(p.key == key && p.range_end == range_end));
        if role.perms.len() == before {
            return Err(AuthError::PermNotGranted);
        }
        Ok(())
    }

    /// `AuthEnable`: needs a `root` user with the `root` role; makes a new token secret.
    pub fn enable(&mut self, secret: String) -> Result<(), AuthError> {
        let root = self.users.get(ROOT).ok_or(AuthError::RootNotExist)?;
        if !root.roles.contains(ROOT) {
            return Err(AuthError::RootRoleNotGranted);
        }
        self.enabled = true;
        self.secret = secret;
        Ok(())
    }

    /// Whether `user` holds the `root` role.
    pub fn is_admin(&self, user: &str) -> bool {
        self.users.get(user).is_some_and(|u| u.roles.contains(ROOT))
    }

    /// Whether `user` may read (`write == false`) or write `[key, range_end)`.
    pub fn permits(&self, user: &str, key: &[u8], range_end: &[u8], write: bool) -> bool {
        let Some(u) = self.users.get(user) else {
            return false;
        };
        if u.roles.contains(ROOT) {
            return true;
        }
        u.roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .any(|role| {
                role.perms
                    .iter()
                    .any(|p| p.kind.allows(write) && p.covers(key, range_end))
            })
    }

    /// `Authenticate`: the user if the password matches.
    pub fn authenticate(&self, name: &str, password: &str) -> Result<(), AuthError> {
        if !self.enabled {
            return Err(AuthError::NotEnabled);
        }
        let user = self.users.get(name).ok_or(AuthError::AuthFailed)?;
        let hash = user.password.as_deref().ok_or(AuthError::NoPasswordUser)?;
        if verify_password(password, hash) {
            Ok(())
        } else {
            Err(AuthError::AuthFailed)
        }
    }
}

fn hmac(secret: &str, payload: &[u8]) -> ring::hmac::Tag {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    ring::hmac::sign(&key, payload)
}

/// A signed token for `user`, valid until `expires_ms` (Unix milliseconds):
/// `base64url(user \n expires_ms) . base64url(HMAC-SHA256)`.
pub fn issue_token(state: &AuthState, user: &str, expires_ms: u64) -> String {
    let payload = format!("{user}\n{expires_ms}");
    let tag = hmac(&state.secret, payload.as_bytes());
    format!("{}.{}", B64.encode(payload), B64.encode(tag.as_ref()))
}

/// The user a token names, if its signature holds, it has not expired at `now_ms` and
/// the user still exists.
pub fn verify_token(state: &AuthState, token: &str, now_ms: u64) -> Result<String, AuthError> {
    let (payload, tag) = token.split_once('.').ok_or(AuthError::InvalidToken)?;
    let payload = B64.decode(payload).map_err(|_| AuthError::InvalidToken)?;
    let tag = B64.decode(tag).map_err(|_| AuthError::InvalidToken)?;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, state.secret.as_bytes());
    ring::hmac::verify(&key, &payload, &tag).map_err(|_| AuthError::InvalidToken)?;
    let text = String::from_utf8(payload).map_err(|_| AuthError::InvalidToken)?;
    let (user, expires) = text.rsplit_once('\n').ok_or(AuthError::InvalidToken)?;
    let expires: u64 = expires.parse().map_err(|_| AuthError::InvalidToken)?;
    if now_ms >= expires || !state.users.contains_key(user) {
        return Err(AuthError::InvalidToken);
    }
    Ok(user.to_string())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A fresh token-signing secret (256 random bits, hex).
pub fn new_secret() -> Result<String, AuthError> {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| AuthError::Cluster("no randomness for the token secret".into()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// An [`AuthState`] with each user's permissions gathered from its roles, so that a
/// check scans one list instead of looking every role up by name (with 1,000 roles:
/// 38 µs per check before, see `permission_check_cost_with_1000_roles`).
#[derive(Debug, Default)]
pub struct Compiled {
    state: AuthState,
    /// Users holding the root role.
    admins: std::collections::HashSet<String>,
    /// Every other user's permissions.
    perms: std::collections::HashMap<String, Vec<Perm>>,
}

impl Compiled {
    /// Gathers `state`'s permissions per user.
    pub fn new(state: AuthState) -> Compiled {
        let mut admins = std::collections::HashSet::new();
        let mut perms = std::collections::HashMap::new();
        for (name, user) in &state.users {
            if user.roles.contains(ROOT) {
                admins.insert(name.clone());
                continue;
            }
            let list: Vec<Perm> = user
                .roles
                .iter()
                .filter_map(|r| state.roles.get(r))
                .flat_map(|r| r.perms.iter().cloned())
                .collect();
            perms.insert(name.clone(), list);
        }
        Compiled {
            state,
            admins,
            perms,
        }
    }

    /// [`AuthState::permits`], from the gathered lists.
    pub fn permits(&self, user: &str, key: &[u8], range_end: &[u8], write: bool) -> bool {
        if self.admins.contains(user) {
            return true;
        }
        self.perms.get(user).is_some_and(|list| {
            list.iter()
                .any(|p| p.kind.allows(write) && p.covers(key, range_end))
        })
    }
}

impl std::ops::Deref for Compiled {
    type Target = AuthState;

    fn deref(&self) -> &AuthState {
        &self.state
    }
}

/// The auth state as far as the apply of an [`Command::Authorized`] write needs it:
/// whether auth is on, and its revision (guarantee 4). Kept by the keyspace's state
/// machine, read again after each change of the auth entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AuthGate {
    enabled: bool,
    revision: u64,
}

impl AuthGate {
    /// The gate of the auth entry `raw` (absent: auth never enabled). An entry that does
    /// not parse closes the gate to every authorized write (as it fails every check at
    /// the members); every replica reads the same bytes, so all decide alike.
    pub fn of(raw: Option<&[u8]>) -> AuthGate {
        #[derive(Deserialize)]
        struct Fields {
            enabled: bool,
            revision: u64,
        }
        match raw.map(serde_json::from_slice::<Fields>) {
            None => AuthGate::default(),
            Some(Ok(f)) => AuthGate {
                enabled: f.enabled,
                revision: f.revision,
            },
            Some(Err(e)) => {
                tracing::error!(
                    error = %e,
                    "the stored auth state is damaged; authorized writes are refused"
                );
                AuthGate {
                    enabled: true,
                    revision: u64::MAX,
                }
            }
        }
    }

    /// Whether a write checked at `seen` (see [`Command::Authorized`]) may apply now: any
    /// while auth is off; with auth on, only one that named a user and was checked at the
    /// current revision (etcd's `isOpPermitted` at apply).
    pub fn admits(&self, seen: Option<u64>) -> Result<(), RequestError> {
        if !self.enabled {
            return Ok(());
        }
        match seen {
            None => Err(RequestError::UserEmpty),
            Some(r) if r < self.revision => Err(RequestError::AuthOldRevision),
            Some(_) => Ok(()),
        }
    }

    /// Whether applying `cmd` may change the gate.
    pub fn changed_by(cmd: &Command) -> bool {
        match cmd {
            Command::ClusterMeta { key, .. } | Command::ClusterMetaCas { key, .. } => {
                key == META_KEY
            }
            _ => false,
        }
    }
}

/// `cmd` (a client's write) with the check it passed at this member: `caller`'s auth
/// revision, or none while auth is off here.
pub fn authorized(caller: Option<&Principal>, cmd: Command) -> Command {
    Command::Authorized {
        auth_revision: caller.map(|p| p.state.revision),
        cmd: Box::new(cmd),
    }
}

/// Who made a request, once its token checked out.
#[derive(Clone, Debug)]
pub struct Principal {
    /// The user.
    pub user: String,
    state: Arc<Compiled>,
}

impl Principal {
    /// Fails unless the user may read `[key, range_end)`.
    pub fn read(&self, key: &[u8], range_end: &[u8]) -> Result<(), Status> {
        self.check(key, range_end, false)
    }

    /// Fails unless the user may write `[key, range_end)`.
    pub fn write(&self, key: &[u8], range_end: &[u8]) -> Result<(), Status> {
        self.check(key, range_end, true)
    }

    fn check(&self, key: &[u8], range_end: &[u8], write: bool) -> Result<(), Status> {
        if self.state.permits(&self.user, key, range_end, write) {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied.status())
        }
    }

    /// Fails unless the user may do every part of `t`: read every key a compare names,
    /// and each operation of both branches (nested transactions included).
    pub fn txn(&self, t: &TxnRequest) -> Result<(), Status> {
        for c in &t.compare {
            self.read(&c.key, &c.range_end)?;
        }
        for op in t.success.iter().chain(&t.failure) {
            match op {
                RequestOp::Range(r) => self.read(&r.key, &r.range_end)?,
                RequestOp::Put(p) => self.put(p)?,
                RequestOp::DeleteRange(d) => self.delete(d)?,
                RequestOp::Txn(t) => self.txn(t)?,
            }
        }
        Ok(())
    }

    /// A put: write the key, and read it when the previous value is asked for.
    pub fn put(&self, p: &PutRequest) -> Result<(), Status> {
        self.write(&p.key, &[])?;
        if p.prev_kv {
            self.read(&p.key, &[])?;
        }
        Ok(())
    }

    /// A delete: write the range, and read it when the previous values are asked for.
    pub fn delete(&self, d: &DeleteRangeRequest) -> Result<(), Status> {
        self.write(&d.key, &d.range_end)?;
        if d.prev_kv {
            self.read(&d.key, &d.range_end)?;
        }
        Ok(())
    }

    /// Fails unless the user holds the `root` role.
    pub fn admin(&self) -> Result<(), Status> {
        if self.state.is_admin(&self.user) {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied.status())
        }
    }
}

/// The member's view of the auth state, cached per applied index, and the token TTL.
pub struct AuthStore {
    node: NodeHandle,
    token_ttl: Duration,
    cache: Mutex<Cache>,
    /// Serializes this member's own changes (other members' are caught by the CAS).
    changes: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Cache {
    applied: u64,
    raw: Option<Vec<u8>>,
    state: Arc<Compiled>,
}

impl std::fmt::Debug for AuthStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthStore")
            .field("token_ttl", &self.token_ttl)
            .finish_non_exhaustive()
    }
}

impl AuthStore {
    /// The auth state of `node`; tokens live `token_ttl` (`--auth-token-ttl`).
    pub fn new(node: NodeHandle, token_ttl: Duration) -> Self {
        AuthStore {
            node,
            token_ttl,
            cache: Mutex::new(Cache {
                applied: u64::MAX,
                ..Cache::default()
            }),
            changes: tokio::sync::Mutex::new(()),
        }
    }

    fn read_raw(&self) -> Result<Option<Vec<u8>>, Status> {
        self.node
            .with_store(|s| s.cluster_meta_get(META_KEY))
            .map_err(|e| Status::internal(e.to_string()))
    }

    /// The state as applied here.
    pub fn state(&self) -> Result<Arc<Compiled>, Status> {
        let applied = self.node.applied_index();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.applied != applied {
            let raw = self.read_raw()?;
            if raw != cache.raw {
                cache.state = Arc::new(Compiled::new(match &raw {
                    Some(bytes) => serde_json::from_slice(bytes).map_err(|e| {
                        Status::internal(format!("the stored auth state is damaged: {e}"))
                    })?,
                    None => AuthState::default(),
                }));
                cache.raw = raw;
            }
            cache.applied = applied;
        }
        Ok(cache.state.clone())
    }

    fn invalidate(&self) {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).applied = u64::MAX;
    }

    /// The caller of a request: `None` while auth is off (nothing is checked), else the
    /// user its `token` metadata names.
    pub fn principal(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<Option<Principal>, Status> {
        let state = self.state()?;
        if !state.enabled {
            return Ok(None);
        }
        let token = metadata
            .get(TOKEN_METADATA)
            .and_then(|v| v.to_str().ok())
            .filter(|t| !t.is_empty());
        let user = match token {
            Some(token) => verify_token(&state, token, now_ms()).map_err(|e| e.status())?,
            // As etcd: without a token, the common name of a verified client certificate
            // (`--client-cert-auth`) names the user, if such a user exists.
            None => metadata
                .get(CERT_USER_HEADER)
                .and_then(|v| v.to_str().ok())
                .filter(|name| state.users.contains_key(*name))
                .ok_or_else(|| AuthError::UserEmpty.status())?
                .to_string(),
        };
        Ok(Some(Principal { user, state }))
    }

    /// Fails unless auth is off or the caller holds the `root` role.
    pub fn require_admin(&self, metadata: &tonic::metadata::MetadataMap) -> Result<(), Status> {
        match self.principal(metadata)? {
            None => Ok(()),
            Some(p) => p.admin(),
        }
    }

    /// `Authenticate`: a token for `user` if the password matches.
    pub async fn authenticate(&self, user: &str, password: &str) -> Result<String, AuthError> {
        // A linearizable view: a user just added elsewhere can log in here.
        self.node
            .read_barrier()
            .await
            .map_err(|e| AuthError::Cluster(e.to_string()))?;
        self.invalidate();
        let state = self
            .state()
            .map_err(|s| AuthError::Cluster(s.message().into()))?;
        let owned = (user.to_string(), password.to_string());
        let checked = state.clone();
        // Argon2 takes tens of milliseconds of CPU: off the async workers.
        tokio::task::spawn_blocking(move || checked.authenticate(&owned.0, &owned.1))
            .await
            .map_err(|e| AuthError::Cluster(e.to_string()))??;
        let ttl = u64::try_from(self.token_ttl.as_millis()).unwrap_or(u64::MAX);
        Ok(issue_token(&state, user, now_ms().saturating_add(ttl)))
    }

    /// Applies `edit` to the current state and replicates the result, redoing it if
    /// another member changed the state meanwhile; returns the new state.
    pub async fn mutate(
        &self,
        edit: impl Fn(&mut AuthState) -> Result<(), AuthError>,
    ) -> Result<Arc<AuthState>, AuthError> {
        let _one_at_a_time = self.changes.lock().await;
        const ATTEMPTS: usize = 8;
        for _ in 0..ATTEMPTS {
            self.node
                .read_barrier()
                .await
                .map_err(|e| AuthError::Cluster(e.to_string()))?;
            let raw = self
                .read_raw()
                .map_err(|s| AuthError::Cluster(s.message().into()))?;
            let mut state: AuthState = match &raw {
                Some(bytes) => serde_json::from_slice(bytes)
                    .map_err(|e| AuthError::Cluster(format!("damaged auth state: {e}")))?,
                None => AuthState::default(),
            };
            edit(&mut state)?;
            state.revision += 1;
            let value =
                serde_json::to_vec(&state).map_err(|e| AuthError::Cluster(e.to_string()))?;
            let cmd = Command::ClusterMetaCas {
                key: META_KEY.to_vec(),
                expect: raw,
                value: Some(value),
            };
            match self.node.propose(cmd).await {
                Ok(_) => {
                    self.invalidate();
                    return Ok(Arc::new(state));
                }
                Err(KvError::Request(RequestError::MetaChanged)) => continue,
                Err(e) => return Err(AuthError::Cluster(e.to_string())),
            }
        }
        Err(AuthError::Cluster(
            "the auth state kept changing concurrently; retry".into(),
        ))
    }
}

#[cfg(test)]
mod tests;
