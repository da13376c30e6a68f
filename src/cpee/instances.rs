//! What the broker asks of CPEE instances: the state of the instance a
//! callback belongs to (`<CPEE-INSTANCE-URL>properties/state/`), which tells
//! a stopped instance (keep its callbacks) from a finished or deleted one
//! (drop them). A callback's own `GET` cannot: CPEE unregisters a stopped
//! instance's callbacks until it resumes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::HeaderValue;
use hyper::{Method, Request};
use tracing::info;

use super::{Cpee, LOOP_HEADER, pool};

/// What a probe found of a CPEE instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum InstanceState {
    /// Running: a stopped callback may be delivered again.
    Running,
    /// Stopped, starting, or not reachable now: ask again later.
    Waiting,
    /// Deleted (404), finished or abandoned: its callbacks will never be
    /// taken.
    Over,
}

impl Cpee {
    /// Where an instance is, from `<instance URL>properties/state/`.
    pub(super) async fn instance_state(&self, instance: &str) -> InstanceState {
        let url = format!("{}/properties/state/", instance.trim_end_matches('/'));
        let Ok(request) = Request::builder()
            .method(Method::GET)
            .uri(&url)
            .header(LOOP_HEADER, HeaderValue::from_static("1"))
            .body(Full::new(Bytes::new()))
        else {
            return InstanceState::Waiting;
        };
        let timeout = Duration::from_millis(self.config.callback_timeout_ms);
        let reply = {
            let Ok(_slot) = self.deliveries.acquire().await else {
                return InstanceState::Waiting;
            };
            tokio::time::timeout(timeout, self.pool.send(request)).await
        };
        match reply {
            Ok(Ok(pool::Reply { status, .. }))
                if status.as_u16() == 404 || status.as_u16() == 410 =>
            {
                InstanceState::Over
            }
            Ok(Ok(pool::Reply { status, body })) if status.is_success() => {
                let text = String::from_utf8_lossy(&body);
                // The state as text, or as a JSON string or `{"value": …}`.
                let state = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| match v {
                        serde_json::Value::String(s) => Some(s),
                        serde_json::Value::Object(o) => {
                            o.get("value")?.as_str().map(str::to_string)
                        }
                        _ => None,
                    })
                    .unwrap_or_else(|| text.trim().to_string());
                match state.as_str() {
                    "running" => InstanceState::Running,
                    "finished" | "abandoned" => InstanceState::Over,
                    _ => InstanceState::Waiting,
                }
            }
            // Unreachable or unsure: ask again later.
            _ => InstanceState::Waiting,
        }
    }

    /// Whether a callback's instance is known to be over (gone, finished,
    /// abandoned); false without its instance URL.
    pub(super) async fn instance_over(&self, callback: u64) -> bool {
        let url = self
            .pending
            .get(&callback)
            .and_then(|p| p.instance_url.clone());
        match url {
            Some(url) => self.instance_state(&url).await == InstanceState::Over,
            None => false,
        }
    }

    /// Every `cpee.probe_interval_secs`: drops queued orders that can no
    /// longer be dispatched, and the pending callbacks whose instance is
    /// gone, finished or abandoned (each instance asked once). Runs until
    /// aborted.
    pub async fn probe(self: Arc<Self>) {
        if self.config.probe_interval_secs == 0 {
            return;
        }
        let every = Duration::from_secs(self.config.probe_interval_secs);
        loop {
            tokio::time::sleep(every).await;
            self.purge_queue();
            let mut by_instance: HashMap<String, Vec<u64>> = HashMap::new();
            for p in self.pending.iter() {
                if let Some(url) = &p.instance_url {
                    by_instance.entry(url.clone()).or_default().push(p.id);
                }
            }
            for (instance, callbacks) in by_instance {
                if self.instance_state(&instance).await == InstanceState::Over {
                    info!(%instance, callbacks = callbacks.len(), "CPEE instance is over; dropping its callbacks");
                    for id in callbacks {
                        self.cancel(id);
                    }
                }
            }
        }
    }
}
