//! One port for both protocols: a request whose content type is `application/grpc` goes
//! to etcd's gRPC service named by the first segment of its path (`/etcdserverpb.KV/Put`),
//! everything else to the HTTP routes (JSON gateway, metrics, health, dashboard).
//!
//! The gRPC services are called directly, chosen by comparing that segment with each
//! service's name: no router matches the path, extracts parameters or boxes the service
//! and its future once more per layer. Every gRPC call is still counted (started, bytes
//! both ways, handled with its code and time), carries the client certificate's name to
//! auth, and runs in its trace span when tracing samples it.
//!
//! A path that names no service is answered as tonic's router answers it: gRPC status
//! `UNIMPLEMENTED`; an unknown method of a known service is the service's own answer,
//! the same status.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use concord_proto::etcdserverpb::auth_server::AuthServer;
use concord_proto::etcdserverpb::cluster_server::ClusterServer;
use concord_proto::etcdserverpb::kv_server::KvServer;
use concord_proto::etcdserverpb::lease_server::LeaseServer;
use concord_proto::etcdserverpb::maintenance_server::MaintenanceServer;
use concord_proto::etcdserverpb::watch_server::WatchServer;
use concord_proto::v3electionpb::election_server::ElectionServer;
use concord_proto::v3lockpb::lock_server::LockServer;
use futures_util::future::BoxFuture;
use tonic::server::NamedService;
use tower::Service;

use super::{auth_api, cluster, concurrency, http, kv, lease, listener, maintenance, watch};
use crate::metrics::GrpcMetrics;

type GrpcRequest = axum::http::Request<axum::body::Body>;
type GrpcResponse = axum::http::Response<tonic::body::Body>;
/// What every generated tonic server's `call` returns.
type GrpcFuture = BoxFuture<'static, Result<GrpcResponse, Infallible>>;

/// etcd's gRPC services.
#[derive(Clone)]
pub(crate) struct GrpcServices {
    pub kv: KvServer<kv::KvService>,
    pub watch: WatchServer<watch::WatchService>,
    pub lease: LeaseServer<lease::LeaseService>,
    pub cluster: ClusterServer<cluster::ClusterService>,
    pub maintenance: MaintenanceServer<maintenance::MaintenanceService>,
    pub auth: AuthServer<auth_api::AuthService>,
    pub lock: LockServer<concurrency::ConcurrencyService>,
    pub election: ElectionServer<concurrency::ConcurrencyService>,
}

/// `Service::call` on a clone of `svc`. Generated tonic servers are always ready
/// (`poll_ready` answers `Ready(Ok)` and keeps no state), so no readiness is awaited.
fn call<S>(svc: &S, req: GrpcRequest) -> GrpcFuture
where
    S: Service<GrpcRequest, Response = GrpcResponse, Error = Infallible, Future = GrpcFuture>
        + Clone,
{
    svc.clone().call(req)
}

impl GrpcServices {
    /// The call of the service `req`'s path names.
    fn call(&self, req: GrpcRequest) -> GrpcFuture {
        let path = req.uri().path();
        let name = path
            .strip_prefix('/')
            .and_then(|p| p.split_once('/'))
            .map_or("", |(name, _)| name);
        match name {
            KvServer::<kv::KvService>::NAME => call(&self.kv, req),
            WatchServer::<watch::WatchService>::NAME => call(&self.watch, req),
            LeaseServer::<lease::LeaseService>::NAME => call(&self.lease, req),
            ClusterServer::<cluster::ClusterService>::NAME => call(&self.cluster, req),
            MaintenanceServer::<maintenance::MaintenanceService>::NAME => {
                call(&self.maintenance, req)
            }
            AuthServer::<auth_api::AuthService>::NAME => call(&self.auth, req),
            LockServer::<concurrency::ConcurrencyService>::NAME => call(&self.lock, req),
            ElectionServer::<concurrency::ConcurrencyService>::NAME => call(&self.election, req),
            _ => Box::pin(async {
                let (parts, ()) = tonic::Status::unimplemented("")
                    .into_http::<()>()
                    .into_parts();
                Ok(GrpcResponse::from_parts(parts, tonic::body::Body::empty()))
            }),
        }
    }
}

/// The client port's service: gRPC to [`GrpcServices`], the rest to `plain`.
#[derive(Clone)]
pub(crate) struct OnePort {
    grpc: Arc<GrpcServices>,
    plain: axum::Router,
    metrics: Arc<GrpcMetrics>,
}

impl OnePort {
    pub(crate) fn new(grpc: GrpcServices, plain: axum::Router, metrics: Arc<GrpcMetrics>) -> Self {
        Self {
            grpc: Arc::new(grpc),
            plain,
            metrics,
        }
    }
}

impl<B> Service<axum::http::Request<B>> for OnePort
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: axum::http::Request<B>) -> Self::Future {
        use tower::ServiceExt as _;
        use tracing::Instrument as _;
        let req = req.map(axum::body::Body::new);
        if !http::is_grpc(&req) {
            return Box::pin(self.plain.clone().oneshot(req));
        }
        let (mut parts, body) = req.into_parts();
        crate::auth::set_cert_user(
            &mut parts.headers,
            parts
                .extensions
                .get::<listener::CertName>()
                .and_then(|n| n.0.as_deref()),
        );
        let (call, body) = self.metrics.start(parts.uri.path(), body);
        let path = parts.uri.path().trim_start_matches('/');
        let span = crate::telemetry::request_span(path, &parts.headers);
        let response = span.in_scope(|| self.grpc.call(GrpcRequest::from_parts(parts, body)));
        Box::pin(
            async move {
                let response = match response.await {
                    Ok(r) => r,
                    Err(never) => match never {},
                };
                Ok(call.response(response.map(axum::body::Body::new)))
            }
            .instrument(span),
        )
    }
}
