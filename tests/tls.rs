//! TLS in both directions over real sockets: a test CA (rcgen) signs the
//! certificates; a local https server plays CPEE for callbacks; the broker
//! serves https to a rustls client and to headless Chromium; and
//! `http.require_https` with trusted proxies over plain http.

mod common;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use common::browser::{self, Browser, chromium};
use common::{Reply, TestServer};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use order_broker::{Config, server};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, PublicKeyData};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Every single wait in these tests ends by this.
const DEADLINE: Duration = Duration::from_secs(10);
const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");
const JSON: (&str, &str) = ("content-type", "application/json");

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A CA made for one test, and the files it writes.
struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
    pem: String,
    dir: tempfile::TempDir,
}

/// A certificate the test CA signed, with its key.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    /// The key's SubjectPublicKeyInfo, DER (what Chromium pins).
    spki: Vec<u8>,
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
            der: cert.der().clone(),
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
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert: cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
            spki: key.subject_public_key_info(),
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

    /// Config that serves https with `leaf`.
    fn serve_with(&self, config: &mut Config, leaf: &Leaf) {
        config.http.tls_cert_file = self.file("broker.pem", &leaf.cert_pem);
        config.http.tls_key_file = self.file("broker-key.pem", &leaf.key_pem);
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

/// One HTTP/1 connection (plain or TLS) and requests on it.
struct Conn {
    sender: SendRequest<Full<Bytes>>,
}

impl Conn {
    async fn over<T>(io: T) -> Conn
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .unwrap();
        tokio::spawn(connection);
        Conn { sender }
    }

    /// A plain connection from `source` (any 127.0.0.0/8 address is this
    /// machine: a second address makes a second peer).
    async fn plain_from(source: IpAddr, to: SocketAddr) -> Conn {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(source, 0)).unwrap();
        Conn::over(socket.connect(to).await.unwrap()).await
    }

    async fn try_send(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Result<Reply, hyper::Error> {
        let mut request = Request::builder().method(method).uri(path);
        if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
            request = request.header("host", "localhost");
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let exchange = async {
            self.sender.ready().await?;
            let response = self.sender.send_request(request).await?;
            let (parts, body) = response.into_parts();
            Ok(Reply {
                status: parts.status,
                headers: parts.headers,
                body: body.collect().await?.to_bytes(),
            })
        };
        tokio::time::timeout(DEADLINE, exchange)
            .await
            .expect("no answer in time")
    }

    async fn send(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Reply {
        self.try_send(method, path, headers, body).await.unwrap()
    }
}

/// A TLS connection to `addr` that trusts only `ca` and verifies `name`;
/// offers h2 and http/1.1 and returns what the server chose.
async fn tls_connect(
    addr: SocketAddr,
    ca: &CertificateDer<'static>,
    name: &str,
) -> std::io::Result<(Conn, Option<Vec<u8>>)> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let connecting = async {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from(name.to_string()).unwrap();
        TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
    };
    let tls = tokio::time::timeout(DEADLINE, connecting)
        .await
        .expect("TLS handshake in time")?;
    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    Ok((Conn::over(tls).await, alpn))
}

/// The broker serving https (`TestServer` probes readiness over plain http).
struct TlsBroker {
    addr: SocketAddr,
    ca: CertificateDer<'static>,
    shutdown: Option<oneshot::Sender<()>>,
}

impl TlsBroker {
    async fn start(config: Config, ca: &TestCa) -> TlsBroker {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server::run(listener, config, async {
            let _ = rx.await;
        }));
        let broker = TlsBroker {
            addr,
            ca: ca.der.clone(),
            shutdown: Some(tx),
        };
        let ready = async {
            loop {
                assert!(!task.is_finished(), "the broker stopped: {:?}", task.await);
                if let Ok((mut conn, _)) = broker.try_connect().await
                    && let Ok(reply) = conn.try_send(Method::GET, "/readyz", &[], "").await
                    && reply.status == StatusCode::OK
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(DEADLINE, ready)
            .await
            .expect("the broker was not ready over https in time");
        broker
    }

    async fn try_connect(&self) -> std::io::Result<(Conn, Option<Vec<u8>>)> {
        tls_connect(self.addr, &self.ca, "localhost").await
    }

    async fn connect(&self) -> Conn {
        self.try_connect().await.unwrap().0
    }
}

impl Drop for TlsBroker {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
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

/// `order_broker_connections` from `/metrics`, asked on `conn`.
async fn connections(conn: &mut Conn) -> f64 {
    let reply = conn.send(Method::GET, "/metrics", &[], "").await;
    let name = "order_broker_connections ";
    String::from_utf8_lossy(&reply.body)
        .lines()
        .find_map(|l| l.strip_prefix(name)?.parse().ok())
        .expect("order_broker_connections in /metrics")
}

#[tokio::test]
async fn the_broker_serves_https_and_cuts_clients_that_never_say_hello() {
    let ca = TestCa::new();
    let leaf = ca.leaf(&["localhost", "127.0.0.1"]);
    let mut config = common::config();
    ca.serve_with(&mut config, &leaf);
    // Also the TLS handshake's deadline.
    config.limits.header_read_timeout_secs = 2;
    let broker = TlsBroker::start(config, &ca).await;

    let (mut conn, alpn) = broker.try_connect().await.unwrap();
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    let reply = conn.send(Method::GET, "/healthz", &[], "").await;
    assert_eq!(reply.status, StatusCode::OK);
    let order = json!({"id": 1, "status": "Mixing", "orderbot_id": "2"}).to_string();
    let reply = conn
        .send(Method::PUT, "/update_order", &[JSON], &order)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let reply = conn.send(Method::GET, "/get_status/1", &[], "").await;
    assert_eq!(
        (
            reply.json()["status"].as_str(),
            reply.json()["stage"].as_str()
        ),
        (Some("Mixing"), Some("in_progress"))
    );
    drop(conn);

    // Plain http to the TLS port fails, and only that connection.
    let mut plain = Conn::over(TcpStream::connect(broker.addr).await.unwrap()).await;
    let refused = plain.try_send(Method::GET, "/healthz", &[], "").await;
    assert!(refused.is_err(), "plain http was answered: {refused:?}");
    let mut conn = broker.connect().await;
    let reply = conn.send(Method::GET, "/get_status/1", &[], "").await;
    assert_eq!(reply.status, StatusCode::OK);

    // A client that opens a connection and never says hello holds a
    // counted place until the deadline, then is cut. (`conn` asks often
    // enough not to be closed as an idle keep-alive meanwhile.)
    let settle = async {
        while connections(&mut conn).await != 1.0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(DEADLINE, settle)
        .await
        .expect("earlier connections left the count");
    let mut silent = TcpStream::connect(broker.addr).await.unwrap();
    let counted = async {
        while connections(&mut conn).await != 2.0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(DEADLINE, counted)
        .await
        .expect("the silent connection counts");
    let mut byte = [0u8; 1];
    let cut = async {
        loop {
            tokio::select! {
                read = silent.read(&mut byte) => return read,
                () = tokio::time::sleep(Duration::from_millis(300)) => {
                    connections(&mut conn).await;
                }
            }
        }
    };
    let cut = tokio::time::timeout(DEADLINE, cut)
        .await
        .expect("the silent connection was not cut");
    assert!(matches!(cut, Ok(0) | Err(_)), "{cut:?}");
    let released = async {
        while connections(&mut conn).await != 1.0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(DEADLINE, released)
        .await
        .expect("the cut connection left the count");
}

#[tokio::test]
async fn bad_tls_files_are_startup_errors_that_name_the_key() {
    let ca = TestCa::new();
    let leaf = ca.leaf(&["localhost"]);
    let other = ca.leaf(&["localhost"]);
    let garbage = ca.file("garbage.pem", "not a certificate\n");
    let cert = ca.file("cert.pem", &leaf.cert_pem);
    let key = ca.file("key.pem", &leaf.key_pem);
    let other_key = ca.file("other-key.pem", &other.key_pem);
    let none = PathBuf::new();
    // (cpee.callback_ca_file, http.tls_cert_file, http.tls_key_file, named)
    let cases = [
        (
            PathBuf::from("/nonexistent/ca.pem"),
            &none,
            &none,
            "cpee.callback_ca_file",
        ),
        (garbage.clone(), &none, &none, "cpee.callback_ca_file"),
        (none.clone(), &garbage, &key, "http.tls_cert_file"),
        (none.clone(), &cert, &garbage, "http.tls_key_file"),
        // A key that is not the certificate's.
        (none.clone(), &cert, &other_key, "http.tls_key_file"),
    ];
    for (i, (ca_file, cert, key, named)) in cases.into_iter().enumerate() {
        let mut config = common::config();
        config.cpee.callback_ca_file = ca_file;
        config.http.tls_cert_file = cert.clone();
        config.http.tls_key_file = key.clone();
        let started = TestServer::try_start(config).await;
        let Err(e) = started else {
            panic!("case {i}: the broker started");
        };
        assert!(e.to_string().contains(named), "case {i}: {e}");
    }
}

/// A shop order (product, customer, order) made through `conn`; its number.
async fn shop_order(conn: &mut Conn, headers: &[(&str, &str)]) -> String {
    let mut all = vec![JSON];
    all.extend_from_slice(headers);
    for (path, body) in [
        (
            "/products",
            json!({"id": 1, "name": "tea", "price": 2.5, "stock": 10}),
        ),
        (
            "/customers",
            json!({"id": 1, "name": "Ann", "balance": 100}),
        ),
    ] {
        let reply = conn.send(Method::POST, path, &all, &body.to_string()).await;
        assert_eq!(
            reply.status,
            StatusCode::CREATED,
            "{path}: {:?}",
            reply.body
        );
    }
    let order = json!({"customer_id": 1, "items": [{"product_id": 1, "quantity": 1}]});
    let reply = conn
        .send(Method::POST, "/orders", &all, &order.to_string())
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    reply.json()["number"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn require_https_refuses_plain_http_and_believes_only_trusted_proxies() {
    let mut config = common::config();
    config.http.require_https = true;
    config.http.trusted_proxies = vec!["127.0.0.1/32".into()];
    let server = TestServer::with_config(config).await;
    let proxy: IpAddr = "127.0.0.1".parse().unwrap();
    let stranger: IpAddr = "127.0.0.2".parse().unwrap();
    let https = [("x-forwarded-proto", "https")];
    const USE_HTTPS: &str = r#"{"detail": "Please use https instead of http"}"#;

    let mut via_proxy = Conn::plain_from(proxy, server.addr).await;
    let number = shop_order(&mut via_proxy, &https).await;
    let confirm = json!({"number": number}).to_string();
    let paid = json!({"order": number}).to_string();

    // Plain http from anyone: 403, with the Order Status API's own body.
    for from in [stranger, proxy] {
        let mut plain = Conn::plain_from(from, server.addr).await;
        let reply = plain
            .send(Method::POST, "/api/store/orders/confirm", &[JSON], &confirm)
            .await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "from {from}");
        assert_eq!(reply.body, USE_HTTPS, "from {from}");
        assert_eq!(reply.header("content-type"), Some("application/json"));
    }
    // The header from someone who is not a trusted proxy changes nothing.
    let mut stranger_conn = Conn::plain_from(stranger, server.addr).await;
    let mut all = vec![JSON];
    all.extend_from_slice(&https);
    let reply = stranger_conn
        .send(Method::POST, "/api/store/orders/confirm", &all, &confirm)
        .await;
    assert_eq!(
        (reply.status, reply.body.as_ref()),
        (StatusCode::FORBIDDEN, USE_HTTPS.as_bytes())
    );
    // A trusted proxy that says the client came over https: served.
    let reply = via_proxy
        .send(Method::POST, "/api/store/orders/confirm", &all, &confirm)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.json()["status"], 10);
    // …and one that says http, or whose last word (its own) is http.
    for proto in ["http", "https, http"] {
        let reply = via_proxy
            .send(
                Method::POST,
                "/api/store/orders/paid",
                &[JSON, ("x-forwarded-proto", proto)],
                &paid,
            )
            .await;
        assert_eq!(
            (reply.status, reply.body.as_ref()),
            (StatusCode::FORBIDDEN, USE_HTTPS.as_bytes()),
            "{proto}"
        );
    }

    // Elsewhere the broker's usual JSON error; unknown paths too.
    for path in ["/get_all", "/orders/1", "/no/such/path"] {
        let reply = stranger_conn.send(Method::GET, path, &https, "").await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{path}");
        assert!(
            reply.error().starts_with("use https"),
            "{path}: {:?}",
            reply.body
        );
    }
    // Load balancers' probes stay plain.
    for path in ["/healthz", "/readyz"] {
        let reply = stranger_conn.send(Method::GET, path, &[], "").await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
    }
}

#[tokio::test]
async fn require_https_serves_requests_that_come_over_tls() {
    let ca = TestCa::new();
    let leaf = ca.leaf(&["localhost"]);
    let mut config = common::config();
    ca.serve_with(&mut config, &leaf);
    config.http.require_https = true;
    let broker = TlsBroker::start(config, &ca).await;
    let mut conn = broker.connect().await;
    let number = shop_order(&mut conn, &[]).await;
    let reply = conn
        .send(
            Method::POST,
            "/api/store/orders/confirm",
            &[JSON],
            &json!({"number": number}).to_string(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
}

// ---- The board in headless Chromium, over https ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_board_loads_over_https_in_chromium() {
    let Some(bin) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have chromium (.ci/run installs it)"
        );
        eprintln!("SKIPPED: chromium is not installed (apt-get install chromium)");
        return;
    };
    let ca = TestCa::new();
    let leaf = ca.leaf(&["localhost", "127.0.0.1"]);
    let mut config = common::config();
    ca.serve_with(&mut config, &leaf);
    config.http.require_https = true;
    let broker = TlsBroker::start(config, &ca).await;
    let mut conn = broker.connect().await;
    let order = json!({"id": 5, "status": "Mixing", "orderbot_id": "2"}).to_string();
    let reply = conn
        .send(Method::PUT, "/update_order", &[JSON], &order)
        .await;
    assert_eq!(reply.status, StatusCode::OK);

    let url = format!("https://127.0.0.1:{}/", broker.addr.port());
    // Chromium trusts exactly the certificate whose key has this SPKI.
    let pin = {
        use base64::Engine as _;
        use sha2::Digest as _;
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&leaf.spki))
    };
    let browser = Browser::launch(
        bin,
        &url,
        &[format!("--ignore-certificate-errors-spki-list={pin}")],
    );
    let mut socket = browser.devtools().await;
    let expression = r#"JSON.stringify({
        protocol: location.protocol,
        state: (document.getElementById('state') || {}).textContent,
        in_progress: [...document.querySelectorAll('#col-in_progress .card')].map(c => +c.dataset.id),
        card: ((document.querySelector('.card') || {}).innerText || '')
    })"#;
    let mut shown = Value::Null;
    let want = json!({"protocol": "https:", "state": "live", "in_progress": [5]});
    for id in 1.. {
        assert!(id < 150, "the board never showed {want}; it shows {shown}");
        shown = browser::evaluate(&mut socket, id, expression, DEADLINE)
            .await
            .as_str()
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or(Value::Null);
        if ["protocol", "state", "in_progress"]
            .iter()
            .all(|k| shown[k] == want[k])
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let card = shown["card"].as_str().unwrap_or_default();
    assert!(card.contains("#5") && card.contains("Mixing"), "{card}");
}

/// The binary reads the files before it listens: a bad one is a config
/// error (exit 2, the key named), and it never says it listens.
#[test]
fn the_binary_refuses_a_bad_pem_file_as_a_config_error() {
    let ca = TestCa::new();
    let garbage = ca.file("garbage.pem", "not a certificate\n");
    let leaf = ca.leaf(&["localhost"]);
    for (key, value) in [
        ("ORDER_BROKER_CPEE_CALLBACK_CA_FILE", garbage.clone()),
        ("ORDER_BROKER_HTTP_TLS_KEY_FILE", garbage.clone()),
    ] {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_order-broker"))
            .args(["--listen", "127.0.0.1:0"])
            .env_remove("RUST_LOG")
            .env("ORDER_BROKER_PERSISTENCE_MODE", "memory")
            .env(
                "ORDER_BROKER_HTTP_TLS_CERT_FILE",
                ca.file("c.pem", &leaf.cert_pem),
            )
            .env(
                "ORDER_BROKER_HTTP_TLS_KEY_FILE",
                ca.file("k.pem", &leaf.key_pem),
            )
            .env(key, value)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        while child.try_wait().unwrap().is_none() {
            if started.elapsed() > DEADLINE {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{key}: the broker started with a bad file");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        let named = key
            .trim_start_matches("ORDER_BROKER_")
            .to_lowercase()
            .replacen('_', ".", 1);
        assert_eq!(output.status.code(), Some(2), "{key}: {stderr}");
        assert!(stderr.contains(&named), "{key}: {stderr}");
        assert!(output.stdout.is_empty(), "{key}: it said it listens");
    }
}
