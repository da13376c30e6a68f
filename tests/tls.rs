//! TLS over real sockets: a test CA (rcgen) signs the certificates; a
//! local https server plays CPEE for callbacks.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use common::{Reply, TestServer};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use order_broker::Config;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

/// Every single wait in these tests ends by this.
const DEADLINE: Duration = Duration::from_secs(10);
const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A CA made for one test, and the files it writes.
struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
    dir: tempfile::TempDir,
}

/// A certificate the test CA signed, with its key.
struct Leaf {
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

impl TestCa {
    fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "order-broker test CA");
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    fn leaf(&self, names: &[&str]) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        }
    }

    /// Writes `text` to a file in the test's directory.
    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn ca_file(&self) -> PathBuf {
        self.file("ca.pem", &self.pem)
    }
}

fn acceptor(leaf: &Leaf) -> TlsAcceptor {
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.cert.clone()], leaf.key.clone_key())
        .unwrap();
    TlsAcceptor::from(Arc::new(config))
}

/// One PUT the engine received.
#[derive(Debug)]
struct Put {
    path: String,
    body: Value,
}

/// A local server playing CPEE: https with `acceptor`, else plain http.
struct Engine {
    addr: SocketAddr,
    puts: mpsc::UnboundedReceiver<Put>,
    /// The SNI name of each TLS connection.
    names: Arc<Mutex<Vec<Option<String>>>>,
    /// TLS handshakes that failed.
    refused: Arc<AtomicUsize>,
}

impl Engine {
    async fn start(acceptor: Option<TlsAcceptor>) -> Engine {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, puts) = mpsc::unbounded_channel();
        let names = Arc::new(Mutex::new(Vec::new()));
        let refused = Arc::new(AtomicUsize::new(0));
        let (seen, failed) = (names.clone(), refused.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (tx, acceptor) = (tx.clone(), acceptor.clone());
                let (seen, failed) = (seen.clone(), failed.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let tx = tx.clone();
                        async move {
                            let path = req.uri().path().to_string();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let _ = tx.send(Put {
                                path,
                                body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                            });
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
                        }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    match acceptor {
                        None => {
                            let _ = http.serve_connection(TokioIo::new(stream), service).await;
                        }
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(tls) => {
                                let name = tls.get_ref().1.server_name().map(str::to_string);
                                seen.lock().unwrap().push(name);
                                let _ = http.serve_connection(TokioIo::new(tls), service).await;
                            }
                            Err(_) => {
                                failed.fetch_add(1, Ordering::SeqCst);
                            }
                        },
                    }
                });
            }
        });
        Engine {
            addr,
            puts,
            names,
            refused,
        }
    }

    fn url(&self, scheme: &str, host: &str, path: &str) -> String {
        format!("{scheme}://{host}:{}{path}", self.addr.port())
    }

    async fn next_put(&mut self) -> Put {
        tokio::time::timeout(DEADLINE, self.puts.recv())
            .await
            .expect("the engine got no PUT in time")
            .unwrap()
    }
}

/// What the broker logs at warn and above, from every test of this binary.
fn logs() -> &'static Mutex<Vec<u8>> {
    static LOGS: OnceLock<&'static Mutex<Vec<u8>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs: &'static Mutex<Vec<u8>> = Box::leak(Box::new(Mutex::new(Vec::new())));
        struct Sink(&'static Mutex<Vec<u8>>);
        impl std::io::Write for Sink {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || Sink(logs))
            .try_init();
        logs
    })
}

fn log_lines_with(needle: &str) -> Vec<String> {
    String::from_utf8_lossy(&logs().lock().unwrap())
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

fn cpee_config() -> Config {
    let mut config = common::config();
    config.cpee.callback_backoff_ms = 20;
    config.cpee.callback_timeout_ms = 2000;
    config
}

async fn post_form(server: &TestServer, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut all = vec![FORM];
    all.extend_from_slice(headers);
    server.send(Method::POST, path, &all, body).await
}

/// Registers a wait for order `id` to be served, with `callback`.
async fn wait_for_served(server: &TestServer, id: u64, callback: &str) {
    server
        .put_json(
            "/update_order",
            &json!({"id": id, "status": "Order Initiated"}).to_string(),
        )
        .await;
    let reply = post_form(
        server,
        "/cpee/wait",
        &[("cpee-callback", callback)],
        &format!("order_id={id}&status=Order+Served"),
    )
    .await;
    assert_eq!(
        (reply.status, reply.header("cpee-callback")),
        (StatusCode::OK, Some("true")),
        "{callback}: {:?}",
        reply.body
    );
}

async fn serve_order(server: &TestServer, id: u64) {
    let body = json!({"id": id, "status": "Order Served"}).to_string();
    assert_eq!(
        server.put_json("/update_order", &body).await.status,
        StatusCode::OK
    );
}

/// The pending callback to `url` once it has a `last_error`.
async fn last_error_of(server: &TestServer, url: &str) -> Value {
    let found = async {
        loop {
            let pending = server.get("/cpee/callbacks").await.json();
            if let Some(p) = pending
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["url"] == url && p["last_error"].is_string())
            {
                return p.clone();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(DEADLINE, found)
        .await
        .unwrap_or_else(|_| panic!("no failed attempt shown for {url}"))
}

#[tokio::test]
async fn an_https_callback_is_delivered_when_the_ca_file_names_the_engines_ca() {
    let ca = TestCa::new();
    let mut engine = Engine::start(Some(acceptor(&ca.leaf(&["localhost"])))).await;
    let mut config = cpee_config();
    config.cpee.callback_ca_file = ca.ca_file();
    // A `host` entry allows the host on any port, https as http.
    config.cpee.callback_allow = vec!["localhost".into()];
    let server = TestServer::with_config(config).await;

    let url = engine.url("https", "localhost", "/callbacks/7");
    wait_for_served(&server, 7, &url).await;
    serve_order(&server, 7).await;
    let put = engine.next_put().await;
    assert_eq!(
        (put.path.as_str(), put.body["status"].as_str()),
        ("/callbacks/7", Some("Order Served"))
    );
    assert_eq!(
        engine.names.lock().unwrap().as_slice(),
        [Some("localhost".to_string())],
        "SNI is the URL's host"
    );
    let delivered = async {
        while server.get("/cpee/callbacks").await.json() != json!([]) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(DEADLINE, delivered)
        .await
        .expect("the delivered callback is no longer pending");
}

#[tokio::test]
async fn https_callbacks_whose_certificate_does_not_verify_are_not_delivered() {
    logs();
    let ca = TestCa::new();
    let mut engine = Engine::start(Some(acceptor(&ca.leaf(&["localhost"])))).await;
    let mut config = cpee_config();
    config.cpee.callback_retries = 10_000; // still pending while we look
    config.cpee.callback_backoff_ms = 50;

    // No CA file: the system's roots do not know the test CA.
    let unknown = TestServer::with_config(config.clone()).await;
    let url = engine.url("https", "localhost", "/unknown-ca");
    wait_for_served(&unknown, 1, &url).await;
    serve_order(&unknown, 1).await;
    let pending = last_error_of(&unknown, &url).await;
    let error = pending["last_error"].as_str().unwrap();
    assert!(
        error.contains("UnknownIssuer") && error.contains("localhost"),
        "{error}"
    );
    assert!(pending["attempts"].as_u64().unwrap() >= 1);
    let id = pending["id"].as_u64().unwrap();
    let warned = log_lines_with(&url);
    assert!(
        warned.iter().any(|l| l.contains("WARN")
            && l.contains(&format!("callback={id}"))
            && l.contains("UnknownIssuer")),
        "a warning names the callback and why: {warned:?}"
    );

    // The CA file names the CA, but the certificate is not for 127.0.0.1.
    config.cpee.callback_ca_file = ca.ca_file();
    let wrong_name = TestServer::with_config(config).await;
    let url = engine.url("https", "127.0.0.1", "/wrong-name");
    wait_for_served(&wrong_name, 1, &url).await;
    serve_order(&wrong_name, 1).await;
    let pending = last_error_of(&wrong_name, &url).await;
    let error = pending["last_error"].as_str().unwrap();
    assert!(error.contains("not valid for name"), "{error}");

    assert!(engine.refused.load(Ordering::SeqCst) >= 2);
    assert!(
        engine.names.lock().unwrap().is_empty(),
        "no handshake completed"
    );
    assert!(
        engine.puts.try_recv().is_err(),
        "nothing was delivered to an engine that did not verify"
    );
}

/// The pool keeps connections by scheme: after an http callback left a
/// plain connection idle to a port, an https callback to that port does not
/// go out on it in plain text; its TLS handshake with the plain server fails.
#[tokio::test]
async fn http_and_https_callbacks_to_one_port_never_share_a_connection() {
    let mut engine = Engine::start(None).await;
    let mut config = cpee_config();
    config.cpee.callback_retries = 10_000;
    config.cpee.callback_backoff_ms = 50;
    let server = TestServer::with_config(config).await;

    let plain = engine.url("http", "127.0.0.1", "/plain");
    wait_for_served(&server, 1, &plain).await;
    serve_order(&server, 1).await;
    assert_eq!(engine.next_put().await.path, "/plain");

    let secure = engine.url("https", "127.0.0.1", "/secure");
    wait_for_served(&server, 2, &secure).await;
    serve_order(&server, 2).await;
    let pending = last_error_of(&server, &secure).await;
    let error = pending["last_error"].as_str().unwrap();
    assert!(error.contains("TLS handshake"), "{error}");
    assert!(
        engine.puts.try_recv().is_err(),
        "the https callback never went out in plain text"
    );
}

#[tokio::test]
async fn https_callback_urls_are_checked_against_the_allow_list_with_port_443() {
    let mut config = cpee_config();
    config.cpee.callback_allow = vec!["engine.invalid:443".into(), "other.invalid".into()];
    let server = TestServer::with_config(config).await;
    server
        .put_json("/update_order", r#"{"id": 1, "status": "Order Initiated"}"#)
        .await;
    for (url, status) in [
        ("https://engine.invalid/cb", StatusCode::OK),
        ("https://engine.invalid:443/cb", StatusCode::OK),
        ("https://engine.invalid:8443/cb", StatusCode::FORBIDDEN),
        ("http://engine.invalid/cb", StatusCode::FORBIDDEN),
        ("https://other.invalid:9443/cb", StatusCode::OK),
        ("ftp://engine.invalid/cb", StatusCode::BAD_REQUEST),
    ] {
        let reply = post_form(
            &server,
            "/cpee/wait",
            &[("cpee-callback", url)],
            "order_id=1&status=Order+Served",
        )
        .await;
        assert_eq!(reply.status, status, "{url}: {:?}", reply.body);
    }
}
