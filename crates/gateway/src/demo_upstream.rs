//! The built-in demo upstream used by the quickstart: a small HTTP service on a
//! loopback port that answers every request with a JSON description of what it
//! received, including the agent identity the gateway asserted and the names
//! (never the values, which may hold an injected credential) of the headers
//! that reached it: `portcullis redteam` reads them to see which spoofed
//! headers got through.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// Starts the demo upstream on `127.0.0.1:<ephemeral>` and returns its address.
pub async fn start() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(handle);
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let mut names: Vec<&str> = parts.headers.keys().map(|n| n.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let reply = serde_json::json!({
        "service": "portcullis demo upstream",
        "message": "hello from behind the portcullis",
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "agent": header("x-portcullis-agent"),
        "request_id": header("x-request-id"),
        "body_bytes": body.len(),
        "host": header("host"),
        "forwarded_for": header("x-forwarded-for"),
        "headers": names,
    });
    let mut response = Response::new(Full::new(Bytes::from(reply.to_string())));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}
