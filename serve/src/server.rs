//! The HTTP/1.1 server under `vmfork serve`'s router: a tokio accept loop
//! and hyper's connection driver, with every limit a hostile client could
//! otherwise stretch held here (docs/serve.md, "Limits and timeouts"):
//! connections, header, idle and drain time. Body time and size are the
//! handler's (http.rs), VMs and the queue are limits.rs's.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::connection::{Activity, Connections, Tracked};
use super::limits::Limits;
use super::metrics::Metrics;

/// hyper's read buffer, and so the largest request head: 64 KiB per
/// connection at most (hyper's default is 400 KiB).
const MAX_BUF: usize = 64 << 10;

#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// From a request's first byte to the end of its head.
    pub header_timeout: Duration,
    /// From the end of a request's head to the end of its body.
    pub body_timeout: Duration,
    /// A connection with no request and no byte moving either way.
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// From the stop request until the server gives up on in-flight work.
    pub drain_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// How the server ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Drained {
    /// Every connection closed and every VM stopped.
    Clean,
    /// `drain_timeout` passed first; this many VMs were still running.
    DeadlinePassed { running: usize },
}

/// Serves `app` on `listener` until `shutdown` completes, then drains:
/// no new connections, idle ones closed, in-flight requests answered and
/// their VMs stopped, all within `limits.drain_timeout`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    vms: Arc<Limits>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> Drained {
    let table = Arc::new(Connections::new(limits.max_connections));
    let (drain, draining) = tokio::sync::watch::channel(false);
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        while tasks.try_join_next().is_some() {}
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of fds or memory: wait for some to be freed rather
                // than spin.
                tracing::warn!("accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let activity = match table.open() {
            Ok((activity, evicted)) => {
                if let Some(evicted) = evicted {
                    metrics.connection_closed(evicted);
                }
                activity
            }
            Err(refused) => {
                metrics.connection_closed(refused);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tasks.spawn(connection(
            Tracked::new(stream, activity.clone()),
            activity,
            app.clone(),
            limits,
            draining.clone(),
            metrics.clone(),
            table.clone(),
        ));
    }
    drop(listener);
    let deadline = Instant::now() + limits.drain_timeout;
    let _ = drain.send(true);
    let drained = tokio::time::timeout_at(deadline, async {
        while tasks.join_next().await.is_some() {}
        // Requests whose client left may still have VMs running.
        vms.all_stopped().await;
    })
    .await;
    match drained {
        Ok(()) => Drained::Clean,
        Err(_) => {
            tasks.abort_all();
            Drained::DeadlinePassed {
                running: vms.running(),
            }
        }
    }
}

/// Both ends of the connection a request came on, in every request's
/// extensions (program functions see them as CGI variables).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionAddrs {
    pub local: Option<std::net::SocketAddr>,
    pub peer: Option<std::net::SocketAddr>,
}

/// Drives one connection until it ends, its clock runs out (header or
/// idle timeout), it is evicted, or the server drains.
async fn connection(
    io: Tracked<tokio::net::TcpStream>,
    activity: Arc<Activity>,
    app: Router,
    limits: HttpLimits,
    mut draining: tokio::sync::watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    table: Arc<Connections>,
) {
    metrics.connections_open(table.len());
    let addrs = ConnectionAddrs {
        local: io.get_ref().local_addr().ok(),
        peer: io.get_ref().peer_addr().ok(),
    };
    let service = TowerToHyperService::new(app);
    let handler_activity = activity.clone();
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(addrs);
        let handling = handler_activity.handling();
        let answer = hyper::service::Service::call(&service, request);
        async move {
            let answer = answer.await;
            drop(handling);
            answer
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        // A client that half-closes after its request still gets the
        // answer; a request's VM is bounded by --timeout anyway.
        .half_close(true)
        // The header clock is ours (connection.rs): hyper's runs while a
        // keep-alive connection waits for its next request, too.
        .header_read_timeout(None)
        .max_buf_size(MAX_BUF)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut shutting_down = false;
    loop {
        let (deadline, _) = activity.deadline(limits.header_timeout, limits.idle_timeout);
        // A head may start while this sleeps on the idle clock: looking
        // again within a header timeout keeps that one on time.
        let wake = deadline.min(Instant::now() + limits.header_timeout);
        tokio::select! {
            _ = conn.as_mut() => break,
            _ = tokio::time::sleep_until(wake) => {
                // Over unless a byte moved or a request began meanwhile.
                let (deadline, ends) =
                    activity.deadline(limits.header_timeout, limits.idle_timeout);
                if let Some(why) = ends.filter(|_| deadline <= Instant::now()) {
                    metrics.connection_closed(why);
                    break;
                }
            }
            _ = activity.evict.notified() => {
                if !activity.is_busy() {
                    break;
                }
                // A request started since: answer it, then close.
                conn.as_mut().graceful_shutdown();
                shutting_down = true;
            }
            _ = draining.changed(), if !shutting_down => {
                conn.as_mut().graceful_shutdown();
                shutting_down = true;
            }
        }
    }
    table.close(&activity);
    metrics.connections_open(table.len());
}
