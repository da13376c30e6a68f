//! `Idempotency-Key` on writes: the first answer to a key is kept for
//! `http.idempotency_ttl_secs` and replayed to any repeat of the same request
//! (same credentials, method, path and body) without running it again. A
//! repeat while the first is still running gets 409; the same key with a
//! different request gets 422. Keys are scoped to the caller's credentials,
//! so one client never sees another's answer. A keyed request runs to its
//! end on a task of its own (`App::route`), so a client that hangs up while
//! its change waits for the journal does not free the key: the change's
//! answer is kept for the retry.

use std::hash::{BuildHasher, Hash, Hasher};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use hyper::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};
use hyper::{Response, StatusCode};

use super::error::ApiError;
use super::{Body, Req, full};

pub const HEADER: &str = "idempotency-key";
const MAX_KEY_BYTES: usize = 255;

enum Slot {
    Running,
    Done {
        fingerprint: u64,
        at: Instant,
        answer: Stored,
    },
}

#[derive(Clone)]
struct Stored {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

pub struct Idempotency {
    /// Scope (credentials, method, path, key) → the first request's slot.
    slots: DashMap<String, Slot>,
    /// Per caller (credentials, or peer address without any): their keys
    /// in the order they were taken, so the expired ones leave from the
    /// front and one caller's count is known without a scan.
    callers: DashMap<u64, std::collections::VecDeque<(Instant, String)>>,
    ttl: Duration,
    max_keys: usize,
    max_per_caller: usize,
    hasher: std::collections::hash_map::RandomState,
}

/// Largest answer kept for replay; a larger one is kept as its status and
/// a short note (our write answers are far smaller).
const MAX_STORED_BYTES: usize = 64 * 1024;

/// What to do with a request that carries a key.
pub enum Claim {
    /// Run it, then `finish` with its answer.
    Run { scope: String, fingerprint: u64 },
    /// Answer with this, without running it.
    Answer(Response<Body>),
}

impl Idempotency {
    pub fn new(ttl: Duration, max_keys: usize, max_per_caller: usize) -> Self {
        Idempotency {
            slots: DashMap::new(),
            callers: DashMap::new(),
            ttl,
            max_keys,
            max_per_caller,
            hasher: Default::default(),
        }
    }

    /// Counts a new key against its caller: false when they hold too many.
    /// Keys older than the TTL leave the caller's queue (and the table, if
    /// nothing renewed them) first.
    fn take_for(&self, caller: u64, scope: &str) -> bool {
        let mut keys = self.callers.entry(caller).or_default();
        while keys.front().is_some_and(|(at, _)| at.elapsed() >= self.ttl) {
            let (_, old) = keys.pop_front().expect("checked");
            self.slots.remove_if(&old, |_, slot| self.expired(slot));
        }
        if keys.len() >= self.max_per_caller {
            return false;
        }
        keys.push_back((Instant::now(), scope.to_string()));
        true
    }

    /// Claims the request's key; None if the request has no key.
    pub fn claim(&self, req: &Req) -> Result<Option<Claim>, ApiError> {
        let Some(key) = req.headers.get(HEADER) else {
            return Ok(None);
        };
        let key = key
            .to_str()
            .ok()
            .filter(|k| !k.is_empty() && k.len() <= MAX_KEY_BYTES)
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "Idempotency-Key must be 1 to {MAX_KEY_BYTES} characters of text"
                ))
            })?;
        // The credential itself, whichever scheme names it (`token X` and
        // `Bearer X` are one caller).
        let credentials = req
            .headers
            .get(AUTHORIZATION)
            .map(|v| {
                let v = v.as_bytes();
                let token = v
                    .iter()
                    .position(|b| *b == b' ')
                    .map_or(v, |at| v[at + 1..].trim_ascii());
                self.hasher.hash_one(token)
            })
            .unwrap_or(0);
        // Who the key counts against: the credentials, or the address.
        let caller = match (credentials, req.peer) {
            (0, Some(ip)) => self.hasher.hash_one(ip),
            (c, _) => c,
        };
        let scope = format!("{credentials:x} {} {} {key}", req.method, req.uri.path());
        let mut h = self.hasher.build_hasher();
        req.uri.query().hash(&mut h);
        req.body.hash(&mut h);
        let fingerprint = h.finish();

        // Size checks first: `len` and `retain` lock every shard, so they
        // must not run while `entry` holds one.
        if self.slots.len() >= self.max_keys {
            self.slots.retain(|_, slot| !self.expired(slot));
        }
        let full = self.slots.len() >= self.max_keys;
        // A key not in the table (or expired) is a new one for its caller.
        let fresh = self.slots.get(&scope).is_none_or(|s| self.expired(&s));
        let claim = match self.slots.entry(scope.clone()) {
            Entry::Occupied(mut e) => match e.get() {
                slot if self.expired(slot) => {
                    e.insert(Slot::Running);
                    Ok(Some(Claim::Run { scope, fingerprint }))
                }
                Slot::Running => Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "a request with this Idempotency-Key is still in progress",
                )),
                Slot::Done { fingerprint: f, .. } if *f != fingerprint => {
                    Err(ApiError::unprocessable(
                        "this Idempotency-Key was used for a different request",
                    ))
                }
                Slot::Done { answer, .. } => Ok(Some(Claim::Answer(replay(answer.clone())))),
            },
            Entry::Vacant(v) => {
                if full {
                    return Err(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "too many Idempotency-Keys in use; retry later",
                    ));
                }
                v.insert(Slot::Running);
                Ok(Some(Claim::Run { scope, fingerprint }))
            }
        };
        if let Ok(Some(Claim::Run { scope, .. })) = &claim
            && fresh
            && !self.take_for(caller, scope)
        {
            self.slots.remove(scope);
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "you hold too many Idempotency-Keys (limits.max_idempotency_keys_per_caller); \
                 reuse one or wait for older ones to expire",
            ));
        }
        claim
    }

    /// Keeps the answer for replays (server errors are not kept: a retry
    /// should run again) and returns it to send.
    pub async fn finish(
        &self,
        scope: String,
        fingerprint: u64,
        response: Response<Body>,
    ) -> Response<Body> {
        use http_body_util::BodyExt;
        if response.status().is_server_error() {
            self.slots.remove(&scope);
            return response;
        }
        let (parts, body) = response.into_parts();
        // Write answers are buffered bodies; collecting them cannot fail.
        let body = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let answer = if body.len() <= MAX_STORED_BYTES {
            Stored {
                status: parts.status,
                headers: parts.headers.clone(),
                body: body.clone(),
            }
        } else {
            let mut headers = HeaderMap::new();
            headers.insert(
                hyper::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            Stored {
                status: parts.status,
                headers,
                body: Bytes::from_static(
                    br#"{"error":"the first answer was too large to keep; it was applied once, read the result"}"#,
                ),
            }
        };
        self.slots.insert(
            scope,
            Slot::Done {
                fingerprint,
                at: Instant::now(),
                answer,
            },
        );
        Response::from_parts(parts, full(body))
    }

    /// Frees the key if the request never finished (its task was dropped).
    pub fn abandon(&self, scope: &str) {
        self.slots
            .remove_if(scope, |_, slot| matches!(slot, Slot::Running));
    }

    fn expired(&self, slot: &Slot) -> bool {
        matches!(slot, Slot::Done { at, .. } if at.elapsed() >= self.ttl)
    }
}

fn replay(answer: Stored) -> Response<Body> {
    let mut response = Response::new(full(answer.body));
    *response.status_mut() = answer.status;
    *response.headers_mut() = answer.headers;
    response.headers_mut().insert(
        HeaderName::from_static("idempotent-replayed"),
        HeaderValue::from_static("true"),
    );
    response
}

/// Frees a claimed key if the task running the request dies before it
/// finishes (a panic); a client going away does not stop that task.
pub struct ClaimGuard<'a> {
    pub idempotency: &'a Idempotency,
    pub scope: Option<String>,
}

impl Drop for ClaimGuard<'_> {
    fn drop(&mut self) {
        if let Some(scope) = &self.scope {
            self.idempotency.abandon(scope);
        }
    }
}
