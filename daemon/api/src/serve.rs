//! The HTTP listener: every connection bounded in number and in time.
//!
//! A connection that sends no complete request header within `header_read_timeout` is closed,
//! and so is a kept-alive one that stays idle that long (hyper starts the header timer when
//! it waits for the next request). At most `max_connections` are open at once, and at most
//! `max_connections_per_address` from one IP address: past either, a connection is answered
//! `503` at once and closed, so that idle or slow clients from one address can neither exhaust
//! the daemon's file descriptors nor keep a probe from another address from being answered.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;
use tracing::{debug, info};

use tandem_ingest::quiet::Quieted;

/// How many connections the listener takes, and for how long it waits for a request.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// A connection must send a complete request header within this time, the first one and
    /// each next one on a kept-alive connection.
    pub header_read_timeout: Duration,
    /// Connections open at once, from everywhere.
    pub max_connections: usize,
    /// Connections open at once from one IP address.
    pub max_connections_per_address: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 1024,
            max_connections_per_address: 64,
        }
    }
}

/// Connections open, and refused, for `/metrics`.
#[derive(Clone)]
pub(crate) struct ConnectionMetrics {
    open: IntGauge,
    refused: IntCounterVec,
}

impl ConnectionMetrics {
    pub(crate) fn register(registry: &Registry) -> prometheus::Result<Self> {
        let open = IntGauge::new(
            "tandem_http_connections_open",
            "HTTP connections open to the API",
        )?;
        let refused = IntCounterVec::new(
            Opts::new(
                "tandem_http_connections_refused_total",
                "HTTP connections answered 503 and closed at once, by the limit they met",
            ),
            &["limit"],
        )?;
        registry.register(Box::new(open.clone()))?;
        registry.register(Box::new(refused.clone()))?;
        Ok(ConnectionMetrics { open, refused })
    }
}

/// The connections open, in all and per address.
#[derive(Default)]
struct OpenConnections {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

/// Holds one connection's place until it closes.
struct Admitted {
    open: Arc<Mutex<OpenConnections>>,
    address: IpAddr,
    metrics: ConnectionMetrics,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        open.total = open.total.saturating_sub(1);
        if let Some(count) = open.per_address.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                open.per_address.remove(&self.address);
            }
        }
        self.metrics.open.dec();
    }
}

/// Admits a connection from `address`, or names the limit it meets.
fn admit(
    open: &Arc<Mutex<OpenConnections>>,
    limits: &ConnectionLimits,
    address: IpAddr,
    metrics: &ConnectionMetrics,
) -> Result<Admitted, &'static str> {
    let mut state = open
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if state.total >= limits.max_connections {
        return Err("max_connections");
    }
    let from_address = state.per_address.entry(address).or_default();
    if *from_address >= limits.max_connections_per_address {
        return Err("max_connections_per_address");
    }
    *from_address += 1;
    state.total += 1;
    metrics.open.inc();
    Ok(Admitted {
        open: open.clone(),
        address,
        metrics: metrics.clone(),
    })
}

/// The answer to a connection over a limit: written at once, without reading the request.
fn refusal(limit: &str) -> Vec<u8> {
    let body = format!(
        r#"{{"error":"too many connections","hint":"the API's {limit} is reached (api.{limit}); close idle connections or raise it"}}"#
    );
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\nretry-after: 1\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Serves `router` on `listener` until `shutdown` completes, then lets the requests under
/// way finish.
pub(crate) async fn serve_connections(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    metrics: ConnectionMetrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    info!(
        address = %listener.local_addr()?,
        header_read_timeout = ?limits.header_read_timeout,
        max_connections = limits.max_connections,
        max_connections_per_address = limits.max_connections_per_address,
        "HTTP API listening"
    );
    let open = Arc::new(Mutex::new(OpenConnections::default()));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let refusals = Quieted::new(Duration::from_secs(10));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    tokio::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, or a connection reset before it was taken:
                    // the listener itself is fine.
                    debug!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let admitted = match admit(&open, &limits, remote.ip(), &metrics) {
            Ok(admitted) => admitted,
            Err(limit) => {
                metrics.refused.with_label_values(&[limit]).inc();
                refusals.warn(|suppressed| {
                    tracing::warn!(caller = %remote, limit, suppressed, "HTTP connection refused: too many connections; close idle connections or raise the limit")
                });
                tokio::spawn(refuse(stream, limit));
                continue;
            }
        };
        let service = hyper::service::service_fn({
            let router = router.clone();
            move |request: hyper::Request<Incoming>| {
                let mut request = request.map(axum::body::Body::new);
                request
                    .extensions_mut()
                    .insert(ConnectInfo::<SocketAddr>(remote));
                router.clone().oneshot(request)
            }
        });
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                debug!(caller = %remote, %error, "HTTP connection ended with an error");
            }
            drop(admitted);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Answers 503 on a connection over a limit and closes it, giving up on a client that does
/// not read.
async fn refuse(mut stream: TcpStream, limit: &'static str) {
    let answer = refusal(limit);
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(&answer).await?;
        stream.shutdown().await
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limits_count_per_address_and_free_on_close() {
        let metrics = ConnectionMetrics::register(&Registry::new()).unwrap();
        let open = Arc::new(Mutex::new(OpenConnections::default()));
        let limits = ConnectionLimits {
            header_read_timeout: Duration::from_secs(1),
            max_connections: 3,
            max_connections_per_address: 2,
        };
        let first: IpAddr = "127.0.0.2".parse().unwrap();
        let second: IpAddr = "127.0.0.3".parse().unwrap();
        let a = admit(&open, &limits, first, &metrics).unwrap();
        let _b = admit(&open, &limits, first, &metrics).unwrap();
        assert_eq!(
            admit(&open, &limits, first, &metrics).err(),
            Some("max_connections_per_address")
        );
        let _c = admit(&open, &limits, second, &metrics).unwrap();
        assert_eq!(
            admit(&open, &limits, second, &metrics).err(),
            Some("max_connections")
        );
        assert_eq!(metrics.open.get(), 3);
        drop(a);
        assert_eq!(metrics.open.get(), 2);
        assert!(admit(&open, &limits, first, &metrics).is_ok());
    }

    #[test]
    fn a_refusal_is_a_complete_response() {
        let answer = String::from_utf8(refusal("max_connections")).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "));
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(length, body.len());
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"], "too many connections");
    }
}
