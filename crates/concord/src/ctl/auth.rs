//! `concord user`, `concord role` and `concord auth`: etcdctl's commands for users, roles
//! and authentication, with its output.

use clap::{Args, Subcommand, ValueEnum};
use concord_proto::authpb;
use concord_proto::etcdserverpb as pb;
use concord_proto::etcdserverpb::auth_client::AuthClient;

use super::{out, Conn, CtlError, CtlResult, Ctx, GlobalArgs, OutputFormat};

/// `concord user`.
#[derive(Args, Debug)]
pub struct UserArgs {
    #[command(flatten)]
    /// Global flags.
    pub global: GlobalArgs,
    #[command(subcommand)]
    /// The user command.
    pub cmd: UserCmd,
}

/// The user commands.
#[derive(Subcommand, Debug)]
pub enum UserCmd {
    /// Adds a new user (`NAME` or `NAME:PASSWORD`)
    Add {
        /// The user, with its password after a colon
        name: String,
        /// The password (instead of NAME:PASSWORD)
        #[arg(long)]
        new_user_password: Option<String>,
        /// A user without password (it can only be named by a client certificate)
        #[arg(long)]
        no_password: bool,
    },
    /// Deletes a user
    Delete {
        /// The user
        name: String,
    },
    /// Gets detailed information of a user
    Get {
        /// The user
        name: String,
        /// Show the permissions of the user's roles too
        #[arg(long)]
        detail: bool,
    },
    /// Lists all users
    List,
    /// Changes the password of a user
    Passwd {
        /// The user
        name: String,
        /// The new password
        #[arg(long)]
        new_user_password: String,
    },
    /// Grants a role to a user
    GrantRole {
        /// The user
        name: String,
        /// The role
        role: String,
    },
    /// Revokes a role from a user
    RevokeRole {
        /// The user
        name: String,
        /// The role
        role: String,
    },
}

/// `concord role`.
#[derive(Args, Debug)]
pub struct RoleArgs {
    #[command(flatten)]
    /// Global flags.
    pub global: GlobalArgs,
    #[command(subcommand)]
    /// The role command.
    pub cmd: RoleCmd,
}

/// What a permission allows.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum PermType {
    /// Reads.
    Read,
    /// Writes.
    Write,
    /// Both.
    Readwrite,
}

/// The key range of a permission: `KEY`, `[KEY, RANGE_END)`, `--prefix` or `--from-key`.
#[derive(Args, Debug)]
pub struct PermRange {
    /// The key (or the start of the range)
    pub key: String,
    /// The end of the range (exclusive)
    pub range_end: Option<String>,
    /// Every key with KEY as prefix
    #[arg(long)]
    pub prefix: bool,
    /// Every key from KEY on
    #[arg(long)]
    pub from_key: bool,
}

impl PermRange {
    fn bounds(&self) -> CtlResult<(Vec<u8>, Vec<u8>)> {
        let key = self.key.as_bytes().to_vec();
        let end = match (&self.range_end, self.prefix, self.from_key) {
            (None, false, false) => Vec::new(),
            (Some(end), false, false) => end.as_bytes().to_vec(),
            (None, true, false) => super::kv::prefix_range_end(&key),
            (None, false, true) => vec![0],
            _ => {
                return Err(CtlError::new(
                    "give one of RANGE_END, --prefix and --from-key",
                ))
            }
        };
        Ok((key, end))
    }
}

/// The role commands.
#[derive(Subcommand, Debug)]
pub enum RoleCmd {
    /// Adds a new role
    Add {
        /// The role
        name: String,
    },
    /// Deletes a role
    Delete {
        /// The role
        name: String,
    },
    /// Gets detailed information of a role
    Get {
        /// The role
        name: String,
    },
    /// Lists all roles
    List,
    /// Grants a key to a role
    GrantPermission {
        /// The role
        name: String,
        /// read, write or readwrite
        #[arg(value_enum)]
        perm: PermType,
        #[command(flatten)]
        /// The keys.
        range: PermRange,
    },
    /// Revokes a key from a role
    RevokePermission {
        /// The role
        name: String,
        #[command(flatten)]
        /// The keys.
        range: PermRange,
    },
}

/// `concord auth`.
#[derive(Args, Debug)]
pub struct AuthArgs {
    #[command(flatten)]
    /// Global flags.
    pub global: GlobalArgs,
    #[command(subcommand)]
    /// The auth command.
    pub cmd: AuthCmd,
}

/// The auth commands.
#[derive(Subcommand, Debug)]
pub enum AuthCmd {
    /// Enables authentication (a `root` user with the `root` role must exist)
    Enable,
    /// Disables authentication
    Disable,
    /// Shows whether authentication is enabled and the auth revision
    Status,
}

fn client(ctx: &Ctx) -> AuthClient<Conn> {
    AuthClient::new(ctx.channel.clone())
}

/// How etcdctl prints a key range of a permission.
fn range_text(key: &[u8], end: &[u8]) -> String {
    let k = String::from_utf8_lossy(key);
    if end.is_empty() {
        return k.into_owned();
    }
    if end == [0] {
        return format!("[{k}, <open ended>");
    }
    let e = String::from_utf8_lossy(end);
    if super::kv::prefix_range_end(key) == end {
        format!("[{k}, {e}) (prefix {k})")
    } else {
        format!("[{k}, {e})")
    }
}

fn print_perms(perms: &[authpb::Permission]) {
    let mut text = String::from("KV Read:\n");
    for p in perms.iter().filter(|p| p.perm_type != 1) {
        text.push_str(&format!("\t{}\n", range_text(&p.key, &p.range_end)));
    }
    text.push_str("KV Write:\n");
    for p in perms.iter().filter(|p| p.perm_type != 0) {
        text.push_str(&format!("\t{}\n", range_text(&p.key, &p.range_end)));
    }
    out(&text);
}

/// Runs `concord user`.
pub async fn run_user(args: UserArgs) -> CtlResult<()> {
    let ctx = Ctx::connect(&args.global).await?;
    let mut auth = client(&ctx);
    match args.cmd {
        UserCmd::Add {
            name,
            new_user_password,
            no_password,
        } => {
            let (name, password) = match (name.split_once(':'), new_user_password) {
                (Some((n, p)), None) => (n.to_string(), p.to_string()),
                (None, Some(p)) => (name, p),
                (None, None) if no_password => (name, String::new()),
                (None, None) => return Err(CtlError::new(
                    "give the password as NAME:PASSWORD or --new-user-password (or --no-password)",
                )),
                (Some(_), Some(_)) => {
                    return Err(CtlError::new(
                        "give the password either in NAME:PASSWORD or --new-user-password",
                    ))
                }
            };
            ctx.call(auth.user_add(pb::AuthUserAddRequest {
                name: name.clone(),
                password,
                options: Some(authpb::UserAddOptions { no_password }),
                hashed_password: String::new(),
            }))
            .await?;
            out(&format!("User {name} created\n"));
        }
        UserCmd::Delete { name } => {
            ctx.call(auth.user_delete(pb::AuthUserDeleteRequest { name: name.clone() }))
                .await?;
            out(&format!("User {name} deleted\n"));
        }
        UserCmd::Get { name, detail } => {
            let r = ctx
                .call(auth.user_get(pb::AuthUserGetRequest { name: name.clone() }))
                .await?;
            if ctx.format() == OutputFormat::Json {
                out(&format!(
                    "{}\n",
                    serde_json::json!({"name": name, "roles": r.roles})
                ));
                return Ok(());
            }
            out(&format!("User: {name}\n"));
            if !detail {
                out(&format!("Roles: {}\n", r.roles.join(" ")));
                return Ok(());
            }
            for role in r.roles {
                out(&format!("Role {role}\n"));
                let perms = ctx
                    .call(auth.role_get(pb::AuthRoleGetRequest { role }))
                    .await?;
                print_perms(&perms.perm);
            }
        }
        UserCmd::List => {
            let r = ctx.call(auth.user_list(pb::AuthUserListRequest {})).await?;
            for u in r.users {
                out(&format!("{u}\n"));
            }
        }
        UserCmd::Passwd {
            name,
            new_user_password,
        } => {
            ctx.call(
                auth.user_change_password(pb::AuthUserChangePasswordRequest {
                    name,
                    password: new_user_password,
                    hashed_password: String::new(),
                }),
            )
            .await?;
            out("Password updated\n");
        }
        UserCmd::GrantRole { name, role } => {
            ctx.call(auth.user_grant_role(pb::AuthUserGrantRoleRequest {
                user: name.clone(),
                role: role.clone(),
            }))
            .await?;
            out(&format!("Role {role} is granted to user {name}\n"));
        }
        UserCmd::RevokeRole { name, role } => {
            ctx.call(auth.user_revoke_role(pb::AuthUserRevokeRoleRequest {
                name: name.clone(),
                role: role.clone(),
            }))
            .await?;
            out(&format!("Role {role} is revoked from user {name}\n"));
        }
    }
    Ok(())
}

/// Runs `concord role`.
pub async fn run_role(args: RoleArgs) -> CtlResult<()> {
    let ctx = Ctx::connect(&args.global).await?;
    let mut auth = client(&ctx);
    match args.cmd {
        RoleCmd::Add { name } => {
            ctx.call(auth.role_add(pb::AuthRoleAddRequest { name: name.clone() }))
                .await?;
            out(&format!("Role {name} created\n"));
        }
        RoleCmd::Delete { name } => {
            ctx.call(auth.role_delete(pb::AuthRoleDeleteRequest { role: name.clone() }))
                .await?;
            out(&format!("Role {name} deleted\n"));
        }
        RoleCmd::Get { name } => {
            let r = ctx
                .call(auth.role_get(pb::AuthRoleGetRequest { role: name.clone() }))
                .await?;
            out(&format!("Role {name}\n"));
            print_perms(&r.perm);
        }
        RoleCmd::List => {
            let r = ctx.call(auth.role_list(pb::AuthRoleListRequest {})).await?;
            for role in r.roles {
                out(&format!("{role}\n"));
            }
        }
        RoleCmd::GrantPermission { name, perm, range } => {
            let (key, range_end) = range.bounds()?;
            let perm_type = match perm {
                PermType::Read => 0,
                PermType::Write => 1,
                PermType::Readwrite => 2,
            };
            ctx.call(
                auth.role_grant_permission(pb::AuthRoleGrantPermissionRequest {
                    name: name.clone(),
                    perm: Some(authpb::Permission {
                        perm_type,
                        key,
                        range_end,
                    }),
                }),
            )
            .await?;
            out(&format!("Role {name} updated\n"));
        }
        RoleCmd::RevokePermission { name, range } => {
            let (key, range_end) = range.bounds()?;
            let text = if range_end.is_empty() {
                format!(
                    "Permission of key {} is revoked from role {name}\n",
                    range.key
                )
            } else {
                format!(
                    "Permission of range {} is revoked from role {name}\n",
                    range_text(&key, &range_end)
                        .split(" (prefix")
                        .next()
                        .unwrap_or_default()
                )
            };
            ctx.call(
                auth.role_revoke_permission(pb::AuthRoleRevokePermissionRequest {
                    role: name,
                    key,
                    range_end,
                }),
            )
            .await?;
            out(&text);
        }
    }
    Ok(())
}

/// Runs `concord auth`.
pub async fn run_auth(args: AuthArgs) -> CtlResult<()> {
    let ctx = Ctx::connect(&args.global).await?;
    let mut auth = client(&ctx);
    match args.cmd {
        AuthCmd::Enable => {
            ctx.call(auth.auth_enable(pb::AuthEnableRequest {})).await?;
            out("Authentication Enabled\n");
        }
        AuthCmd::Disable => {
            ctx.call(auth.auth_disable(pb::AuthDisableRequest {}))
                .await?;
            out("Authentication Disabled\n");
        }
        AuthCmd::Status => {
            let r = ctx.call(auth.auth_status(pb::AuthStatusRequest {})).await?;
            out(&format!(
                "Authentication Status: {}\nAuthRevision: {}\n",
                r.enabled, r.auth_revision
            ));
        }
    }
    Ok(())
}
