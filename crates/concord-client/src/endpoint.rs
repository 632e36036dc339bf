//! Endpoints as users write them, and dialling one.

use std::time::Duration;

use concord_tls::Dialer;
use tonic::transport::{Channel, Endpoint};

use crate::error::ClientError;

/// `host:port`, `http://host:port` or `https://host:port` (a trailing `/` is dropped) as
/// the URL to dial; without a scheme, `http`.
///
/// Errors: an empty endpoint, a scheme other than `http` and `https`.
pub fn endpoint_url(ep: &str) -> Result<String, ClientError> {
    let ep = ep.trim();
    let bad = |reason: &str| ClientError::BadEndpoint {
        endpoint: ep.to_string(),
        reason: reason.to_string(),
    };
    let (scheme, rest) = match ep.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, ep),
    };
    let host_port = rest.trim_end_matches('/');
    if host_port.is_empty() {
        return Err(bad("no host:port"));
    }
    let scheme = match scheme {
        None | Some("http") => "http",
        Some("https") => "https",
        Some(other) => return Err(bad(&format!("unsupported scheme {other:?}"))),
    };
    let url = format!("{scheme}://{host_port}");
    // Validates host and port the way the transport will read them.
    Endpoint::from_shared(url.clone()).map_err(|e| bad(&e.to_string()))?;
    Ok(url)
}

/// Opens a channel to `ep` within `timeout` (connect timeout and overall bound);
/// `https://` with the system's trusted CAs.
pub async fn dial(ep: &str, timeout: Duration) -> Result<Channel, ClientError> {
    dial_with(ep, timeout, &Dialer::default()).await
}

/// [`dial`], `https://` with `dialer`'s TLS settings.
pub async fn dial_with(
    ep: &str,
    timeout: Duration,
    dialer: &Dialer,
) -> Result<Channel, ClientError> {
    let url = endpoint_url(ep)?;
    let endpoint = Endpoint::from_shared(url)
        .map_err(|e| ClientError::BadEndpoint {
            endpoint: ep.to_string(),
            reason: e.to_string(),
        })?
        .connect_timeout(timeout)
        .tcp_nodelay(true);
    match tokio::time::timeout(timeout, dialer.connect(endpoint)).await {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(e)) => Err(ClientError::Connect {
            endpoint: ep.to_string(),
            detail: std::error::Error::source(&e)
                .map(|s| s.to_string())
                .unwrap_or_else(|| e.to_string()),
        }),
        Err(_) => Err(ClientError::ConnectTimeout {
            endpoint: ep.to_string(),
            timeout,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_as_users_write_them() {
        assert_eq!(
            endpoint_url("127.0.0.1:2379").unwrap(),
            "http://127.0.0.1:2379"
        );
        assert_eq!(
            endpoint_url(" http://localhost:2379/ ").unwrap(),
            "http://localhost:2379"
        );
        assert_eq!(endpoint_url("https://a:1").unwrap(), "https://a:1");
        for bad in ["", "ftp://a:1", "unixs://a:1", "http://", "http://a b:1"] {
            assert!(
                matches!(endpoint_url(bad), Err(ClientError::BadEndpoint { .. })),
                "{bad:?} accepted"
            );
        }
    }

    #[tokio::test]
    async fn a_closed_port_is_a_definite_connect_error() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let e = dial(&format!("127.0.0.1:{port}"), Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::Connect { .. }), "{e:?}");
        assert!(e.is_definite());
    }
}
