//! The `etcdserverpb.Auth` service over [`crate::auth::AuthStore`]: `AuthEnable`,
//! `AuthDisable`, `AuthStatus`, `Authenticate`, users and roles. Every call but
//! `Authenticate` and `AuthStatus` needs the `root` role once auth is on.

use concord_proto::authpb;
use concord_proto::etcdserverpb as pb;
use concord_proto::etcdserverpb::auth_server::Auth;
use tonic::{Request, Response, Status};

use super::api::Ctx;
use crate::auth::{self, AuthError, AuthState, Perm, PermKind};

/// The service.
#[derive(Clone)]
pub(crate) struct AuthService {
    pub ctx: Ctx,
}

fn status(e: AuthError) -> Status {
    e.status()
}

impl AuthService {
    /// Checks the caller is root (when auth is on), applies `edit`, answers a header.
    async fn change(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        edit: impl Fn(&mut AuthState) -> Result<(), AuthError>,
    ) -> Result<pb::ResponseHeader, Status> {
        self.ctx.auth.require_admin(metadata)?;
        self.ctx.auth.mutate(edit).await.map_err(status)?;
        Ok(self.ctx.header())
    }

    fn admin_view(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<std::sync::Arc<auth::Compiled>, Status> {
        self.ctx.auth.require_admin(metadata)?;
        self.ctx.auth.state()
    }

    /// The state, for root or for a caller `allowed` lets through (as etcd: a user may
    /// read itself and the roles it holds).
    fn view_for(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        allowed: impl Fn(&AuthState, &str) -> bool,
    ) -> Result<std::sync::Arc<auth::Compiled>, Status> {
        let state = self.ctx.auth.state()?;
        if let Some(p) = self.ctx.auth.principal(metadata)? {
            if p.admin().is_err() && !allowed(&state, &p.user) {
                return Err(status(AuthError::PermissionDenied));
            }
        }
        Ok(state)
    }
}

/// A password's hash, computed off the async workers (Argon2 takes tens of ms).
async fn hash(password: String) -> Result<String, Status> {
    tokio::task::spawn_blocking(move || auth::hash_password(&password))
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(status)
}

fn no_hashed(hashed: &str) -> Result<(), Status> {
    if hashed.is_empty() {
        Ok(())
    } else {
        Err(Status::invalid_argument(
            "concord: pre-hashed passwords are not accepted; send the password (it is hashed with Argon2id by the member)",
        ))
    }
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_status(
        &self,
        _request: Request<pb::AuthStatusRequest>,
    ) -> Result<Response<pb::AuthStatusResponse>, Status> {
        let state = self.ctx.auth.state()?;
        Ok(Response::new(pb::AuthStatusResponse {
            header: Some(self.ctx.header()),
            enabled: state.enabled,
            auth_revision: state.revision,
        }))
    }

    async fn authenticate(
        &self,
        request: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        let r = request.into_inner();
        let token = self
            .ctx
            .auth
            .authenticate(&r.name, &r.password)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::AuthenticateResponse {
            header: Some(self.ctx.header()),
            token,
        }))
    }

    async fn auth_enable(
        &self,
        request: Request<pb::AuthEnableRequest>,
    ) -> Result<Response<pb::AuthEnableResponse>, Status> {
        let secret = auth::new_secret().map_err(status)?;
        // Enabling twice is not an error (etcd answers OK); the secret stays.
        let header = self
            .change(request.metadata(), |s| {
                if s.enabled {
                    return Ok(());
                }
                s.enable(secret.clone())
            })
            .await?;
        Ok(Response::new(pb::AuthEnableResponse {
            header: Some(header),
        }))
    }

    async fn auth_disable(
        &self,
        request: Request<pb::AuthDisableRequest>,
    ) -> Result<Response<pb::AuthDisableResponse>, Status> {
        let header = self
            .change(request.metadata(), |s| {
                s.enabled = false;
                Ok(())
            })
            .await?;
        Ok(Response::new(pb::AuthDisableResponse {
            header: Some(header),
        }))
    }

    async fn user_add(
        &self,
        request: Request<pb::AuthUserAddRequest>,
    ) -> Result<Response<pb::AuthUserAddResponse>, Status> {
        self.ctx.auth.require_admin(request.metadata())?;
        let (metadata, r) = (request.metadata().clone(), request.into_inner());
        no_hashed(&r.hashed_password)?;
        let no_password = r.options.as_ref().is_some_and(|o| o.no_password);
        let hashed = if no_password {
            None
        } else {
            Some(hash(r.password).await?)
        };
        let header = self
            .change(&metadata, |s| s.user_add(&r.name, hashed.clone()))
            .await?;
        Ok(Response::new(pb::AuthUserAddResponse {
            header: Some(header),
        }))
    }

    async fn user_get(
        &self,
        request: Request<pb::AuthUserGetRequest>,
    ) -> Result<Response<pb::AuthUserGetResponse>, Status> {
        let name = request.get_ref().name.clone();
        let state = self.view_for(request.metadata(), |_, caller| caller == name)?;
        let user = state
            .users
            .get(&request.get_ref().name)
            .ok_or_else(|| status(AuthError::UserNotFound))?;
        Ok(Response::new(pb::AuthUserGetResponse {
            header: Some(self.ctx.header()),
            roles: user.roles.iter().cloned().collect(),
        }))
    }

    async fn user_list(
        &self,
        request: Request<pb::AuthUserListRequest>,
    ) -> Result<Response<pb::AuthUserListResponse>, Status> {
        let state = self.admin_view(request.metadata())?;
        Ok(Response::new(pb::AuthUserListResponse {
            header: Some(self.ctx.header()),
            users: state.users.keys().cloned().collect(),
        }))
    }

    async fn user_delete(
        &self,
        request: Request<pb::AuthUserDeleteRequest>,
    ) -> Result<Response<pb::AuthUserDeleteResponse>, Status> {
        let name = request.get_ref().name.clone();
        let header = self
            .change(request.metadata(), |s| s.user_delete(&name))
            .await?;
        Ok(Response::new(pb::AuthUserDeleteResponse {
            header: Some(header),
        }))
    }

    async fn user_change_password(
        &self,
        request: Request<pb::AuthUserChangePasswordRequest>,
    ) -> Result<Response<pb::AuthUserChangePasswordResponse>, Status> {
        self.ctx.auth.require_admin(request.metadata())?;
        let (metadata, r) = (request.metadata().clone(), request.into_inner());
        no_hashed(&r.hashed_password)?;
        let hashed = hash(r.password).await?;
        let header = self
            .change(&metadata, |s| {
                s.user_change_password(&r.name, hashed.clone())
            })
            .await?;
        Ok(Response::new(pb::AuthUserChangePasswordResponse {
            header: Some(header),
        }))
    }

    async fn user_grant_role(
        &self,
        request: Request<pb::AuthUserGrantRoleRequest>,
    ) -> Result<Response<pb::AuthUserGrantRoleResponse>, Status> {
        let r = request.get_ref().clone();
        let header = self
            .change(request.metadata(), |s| s.user_grant_role(&r.user, &r.role))
            .await?;
        Ok(Response::new(pb::AuthUserGrantRoleResponse {
            header: Some(header),
        }))
    }

    async fn user_revoke_role(
        &self,
        request: Request<pb::AuthUserRevokeRoleRequest>,
    ) -> Result<Response<pb::AuthUserRevokeRoleResponse>, Status> {
        let r = request.get_ref().clone();
        let header = self
            .change(request.metadata(), |s| s.user_revoke_role(&r.name, &r.role))
            .await?;
        Ok(Response::new(pb::AuthUserRevokeRoleResponse {
            header: Some(header),
        }))
    }

    async fn role_add(
        &self,
        request: Request<pb::AuthRoleAddRequest>,
    ) -> Result<Response<pb::AuthRoleAddResponse>, Status> {
        let name = request.get_ref().name.clone();
        let header = self
            .change(request.metadata(), |s| s.role_add(&name))
            .await?;
        Ok(Response::new(pb::AuthRoleAddResponse {
            header: Some(header),
        }))
    }

    async fn role_get(
        &self,
        request: Request<pb::AuthRoleGetRequest>,
    ) -> Result<Response<pb::AuthRoleGetResponse>, Status> {
        let role = request.get_ref().role.clone();
        let state = self.view_for(request.metadata(), |s, caller| {
            s.users.get(caller).is_some_and(|u| u.roles.contains(&role))
        })?;
        let name = &request.get_ref().role;
        let perm = if name == auth::ROOT && !state.roles.contains_key(name) {
            // The built-in root role: everything.
            vec![authpb::Permission {
                perm_type: PermKind::ReadWrite.to_pb(),
                key: Vec::new(),
                range_end: vec![0],
            }]
        } else {
            state
                .roles
                .get(name)
                .ok_or_else(|| status(AuthError::RoleNotFound))?
                .perms
                .iter()
                .map(|p| authpb::Permission {
                    perm_type: p.kind.to_pb(),
                    key: p.key.clone(),
                    range_end: p.range_end.clone(),
                })
                .collect()
        };
        Ok(Response::new(pb::AuthRoleGetResponse {
            header: Some(self.ctx.header()),
            perm,
        }))
    }

    async fn role_list(
        &self,
        request: Request<pb::AuthRoleListRequest>,
    ) -> Result<Response<pb::AuthRoleListResponse>, Status> {
        let state = self.admin_view(request.metadata())?;
        Ok(Response::new(pb::AuthRoleListResponse {
            header: Some(self.ctx.header()),
            roles: state.roles.keys().cloned().collect(),
        }))
    }

    async fn role_delete(
        &self,
        request: Request<pb::AuthRoleDeleteRequest>,
    ) -> Result<Response<pb::AuthRoleDeleteResponse>, Status> {
        let name = request.get_ref().role.clone();
        let header = self
            .change(request.metadata(), |s| s.role_delete(&name))
            .await?;
        Ok(Response::new(pb::AuthRoleDeleteResponse {
            header: Some(header),
        }))
    }

    async fn role_grant_permission(
        &self,
        request: Request<pb::AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<pb::AuthRoleGrantPermissionResponse>, Status> {
        let r = request.get_ref().clone();
        let p = r.perm.ok_or_else(|| status(AuthError::BadPermission))?;
        let perm = Perm {
            kind: PermKind::from_pb(p.perm_type).ok_or_else(|| status(AuthError::BadPermission))?,
            key: p.key,
            range_end: p.range_end,
        };
        let header = self
            .change(request.metadata(), |s| s.role_grant(&r.name, perm.clone()))
            .await?;
        Ok(Response::new(pb::AuthRoleGrantPermissionResponse {
            header: Some(header),
        }))
    }

    async fn role_revoke_permission(
        &self,
        request: Request<pb::AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<pb::AuthRoleRevokePermissionResponse>, Status> {
        let r = request.get_ref().clone();
        let header = self
            .change(request.metadata(), |s| {
                s.role_revoke(&r.role, &r.key, &r.range_end)
            })
            .await?;
        Ok(Response::new(pb::AuthRoleRevokePermissionResponse {
            header: Some(header),
        }))
    }
}
