//! A follower's writes go to the leader: the request as it came (method,
//! path, headers, body) to the leader's `advertise_url`, and its answer
//! back once this node applied the change it made (the leader names the
//! seq in [`SEQ_HEADER`]), so a client reads its own write on the node it
//! talks to.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::{CLIENT_HEADER, Cluster, FORWARDED_HEADER, HTTPS_HEADER, TOKEN_HEADER};
use crate::model::Seq;

/// On the leader's answer to a change: the newest seq the request's
/// change(s) may have, so the node that forwarded it waits for that seq.
pub const SEQ_HEADER: &str = "order-broker-seq";

pub(super) type Client = HyperClient<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The client that forwards to the leader's `advertise_url`, `http://` or
/// `https://` (verified with `tls`, see `crate::tls::node_client_config`).
pub(super) fn client(tls: rustls::ClientConfig) -> Client {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(2)));
    connector.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(connector);
    HyperClient::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

/// The leader's answer to a forwarded request.
pub struct Forwarded {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Why a request could not be forwarded (the client gets 503).
#[derive(Debug)]
pub enum ForwardError {
    NoLeader,
    Unreachable(String),
}

impl std::fmt::Display for ForwardError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ForwardError::NoLeader => f.write_str("the cluster has no leader right now; retry"),
            ForwardError::Unreachable(e) => write!(f, "the cluster's leader did not answer: {e}"),
        }
    }
}

/// Hop-by-hop headers, not forwarded (RFC 9110 7.6.1), the old ones
/// proxies still meet, and the length, which the client sets for the body
/// it sends.
const HOP: [HeaderName; 7] = [
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::HOST,
    header::CONTENT_LENGTH,
];
const OLD_HOP: [&str; 2] = ["keep-alive", "proxy-connection"];

/// What only the forwarding node says: a client's own are dropped.
const OURS: [&str; 4] = [FORWARDED_HEADER, CLIENT_HEADER, TOKEN_HEADER, HTTPS_HEADER];

/// Whether `name` goes to the leader as the client sent it: not a
/// hop-by-hop header, nor one the `Connection` header names, nor ours.
fn passes(name: &HeaderName, connection: &[String]) -> bool {
    !HOP.contains(name)
        && !OLD_HOP.contains(&name.as_str())
        && !OURS.contains(&name.as_str())
        && !connection.iter().any(|c| c == name.as_str())
}

impl Cluster {
    /// Sends a write to the leader and returns its answer once this node
    /// applied the change (at most `cluster.lease_ms` + 5 s after the
    /// answer; then the answer goes back anyway, the change being durable).
    /// `deadline`: how long the leader's answer may take (a CPEE long poll
    /// waits there). `client`: the address of the client this node serves
    /// and whether it came over https, which the leader's access rules see
    /// (vouched for by the lease's token).
    pub async fn forward(
        &self,
        method: &Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: Bytes,
        deadline: Duration,
        client: super::Vouched,
    ) -> Result<Forwarded, ForwardError> {
        let leader = self.leader.lock().clone().ok_or(ForwardError::NoLeader)?;
        if leader.node_id == self.config.node_id {
            // The lease names this node, which does not lead (any more).
            return Err(ForwardError::NoLeader);
        }
        let mut request = Request::builder()
            .method(method.clone())
            .uri(format!("{}{}", leader.url, path_and_query));
        let connection: Vec<String> = headers
            .get_all(header::CONNECTION)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).to_ascii_lowercase())
            .flat_map(|v| {
                v.split(',')
                    .map(|t| t.trim().to_string())
                    .collect::<Vec<_>>()
            })
            .collect();
        for (name, value) in headers {
            if passes(name, &connection) {
                request = request.header(name, value);
            }
        }
        if let Some(address) = client.client {
            request = request.header(CLIENT_HEADER, address.to_string());
        }
        if client.https {
            request = request.header(HTTPS_HEADER, "1");
        }
        if let Ok(token) = HeaderValue::from_str(&leader.token) {
            request = request.header(TOKEN_HEADER, token);
        }
        let request = request
            .header(
                FORWARDED_HEADER,
                HeaderValue::from_str(&self.config.node_id)
                    .unwrap_or(HeaderValue::from_static("node")),
            )
            .body(Full::new(body))
            .map_err(|e| ForwardError::Unreachable(e.to_string()))?;
        self.counters.forwarded.fetch_add(1, Ordering::Relaxed);
        let answer = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| ForwardError::Unreachable(e.to_string()))?;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| ForwardError::Unreachable(e.to_string()))?
                .to_bytes();
            Ok::<_, ForwardError>((parts, body))
        };
        let (parts, body) = tokio::time::timeout(deadline, answer)
            .await
            .map_err(|_| ForwardError::Unreachable(format!("no answer within {deadline:?}")))??;
        let seq = parts
            .headers
            .get(SEQ_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .map(Seq);
        if let Some(seq) = seq {
            let wait = Duration::from_millis(self.config.lease_ms) + Duration::from_secs(5);
            if !self.applied(seq, wait).await {
                tracing::warn!(
                    seq = seq.0,
                    "cluster: a forwarded change is not applied here yet; answering anyway"
                );
            }
        }
        let mut headers = parts.headers;
        for name in &HOP {
            headers.remove(name);
        }
        Ok(Forwarded {
            status: parts.status,
            headers,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_end_to_end_headers_of_the_client_are_forwarded() {
        let connection = vec!["x-secret-hop".to_string()];
        let name = |n: &str| HeaderName::from_bytes(n.as_bytes()).unwrap();
        assert!(passes(&name("authorization"), &connection));
        assert!(passes(&name("idempotency-key"), &connection));
        for dropped in [
            "connection",
            "transfer-encoding",
            "host",
            "content-length",
            "x-secret-hop",
            "keep-alive",
            "trailer",
            FORWARDED_HEADER,
            CLIENT_HEADER,
            TOKEN_HEADER,
            HTTPS_HEADER,
        ] {
            assert!(!passes(&name(dropped), &connection), "{dropped}");
        }
    }
}
