//! The integration tests' shared harness: a real Kafka-protocol broker (tansu) on 127.0.0.1, the
//! `longmem` binary as a child process, and Kafka clients to feed and read topics. Everything it
//! starts is killed on drop. Waits poll a condition against a deadline; nothing sleeps blindly.
#![allow(dead_code)]

mod broker;
mod daemon;
mod reading;
pub mod supply;

// Each test uses the parts it needs.
#[allow(unused_imports)]
pub use broker::*;
#[allow(unused_imports)]
pub use daemon::*;
#[allow(unused_imports)]
pub use reading::*;

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn tool(var: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(default));
    assert!(
        path.exists(),
        "{} not found; run `bash scripts/fetch-tools.sh` (or `make test`), or set {var}",
        path.display()
    );
    path
}

pub fn ort_library() -> PathBuf {
    tool("ORT_DYLIB_PATH", ".tools/onnxruntime/libonnxruntime.so")
}

/// JSON Schema validators for `schemas/<name>.json`.
pub fn schema(name: &str) -> jsonschema::Validator {
    let text =
        std::fs::read_to_string(repo().join("schemas").join(format!("{name}.json"))).unwrap();
    let schema: serde_json::Value = serde_json::from_str(&text).unwrap();
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap_or_else(|e| panic!("schema {name}: {e}"))
}

/// Real events: the first `n` MovieLens-100k ratings in time order, as (key, payload).
pub fn movielens_messages(n: usize) -> Vec<(Option<Vec<u8>>, Vec<u8>)> {
    let events = longmem::tools::datasets::movielens_events(
        &repo().join("../shared/data/seqrec/recbole_ml100k"),
    )
    .unwrap();
    events
        .iter()
        .take(n)
        .map(|e| {
            (
                Some(e.user_id.clone().into_bytes()),
                e.to_json().into_bytes(),
            )
        })
        .collect()
}

/// How many of `messages` each user (the message key) sent.
pub fn events_per_user(
    messages: &[(Option<Vec<u8>>, Vec<u8>)],
) -> std::collections::HashMap<String, u64> {
    let mut sent = std::collections::HashMap::new();
    for (key, _) in messages {
        *sent
            .entry(String::from_utf8(key.clone().unwrap()).unwrap())
            .or_default() += 1;
    }
    sent
}

/// Every user's stored event count in the store at `store_dir` equals what was sent to them, and
/// the store knows no one else: each event applied exactly once.
pub fn assert_each_event_applied_once(
    store_dir: &std::path::Path,
    sent_per_user: &std::collections::HashMap<String, u64>,
) {
    let store = longmem::memory::Store::open(store_dir, 1 << 24).unwrap();
    for (user, sent) in sent_per_user {
        let memory = store
            .user(user)
            .unwrap()
            .unwrap_or_else(|| panic!("user {user} has no memory"));
        assert_eq!(
            memory.events(),
            *sent,
            "user {user}: stored count differs from events sent"
        );
    }
    assert_eq!(store.user_count(), sent_per_user.len());
}
