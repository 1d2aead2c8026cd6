//! The command line as an operator meets it: config validation, start-up errors that say what to do,
//! and `inspect`.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::repo;
use longmem::event::{EventType, UserEvent};
use longmem::memory::{Store, StoreBatch, UserMemory};

fn longmem(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_longmem"));
    cmd.args(args).current_dir(repo());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn config_with(dir: &Path, extra: &str) -> String {
    let text = std::fs::read_to_string(repo().join("config/default.toml")).unwrap();
    let path = dir.join("c.toml");
    std::fs::write(&path, format!("{text}\n{extra}")).unwrap();
    path.display().to_string()
}

#[test]
fn check_config_prints_the_effective_config_with_overrides() {
    let o = longmem(
        &["check-config", "config/default.toml"],
        &[(
            "LONGMEM__KAFKA__BOOTSTRAP_SERVERS",
            "broker-a:9092,broker-b:9092",
        )],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8(o.stdout).unwrap();
    let effective: toml::Table = out.parse().unwrap();
    assert_eq!(
        effective["kafka"]["bootstrap_servers"].as_str(),
        Some("broker-a:9092,broker-b:9092")
    );
    assert_eq!(
        effective["topics"]["input"][0].as_str(),
        Some("longmem.events")
    );
    assert!(effective["store"].get("path").is_some() && effective["model"].get("path").is_some());
    assert!(effective["metrics"].get("listen").is_some());
    // Its model and runtime paths are the image's (/opt/longmem): check the file alone.
    let o = longmem(
        &["check-config", "--config-only", "config/production.toml"],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = longmem(&["check-config", "config/production.toml"], &[]);
    assert!(stderr(&o).contains("/opt/longmem/models"), "{}", stderr(&o));
}

#[test]
fn bad_config_fails_naming_the_key() {
    let o = longmem(
        &["check-config", "config/default.toml"],
        &[("LONGMEM__BATCH__MAX_EVENTS", "-4")],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("batch.max_events"), "{}", stderr(&o));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("typo.toml");
    let text = std::fs::read_to_string(repo().join("config/default.toml")).unwrap();
    std::fs::write(&path, text.replace("max_wait_ms", "max_wait")).unwrap();
    let o = longmem(&["check-config", path.to_str().unwrap()], &[]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("batch") && err.contains("max_wait"), "{err}");

    let o = longmem(&["check-config", "/nonexistent.toml"], &[]);
    assert_eq!(
        o.status.code(),
        Some(78),
        "config errors exit with EX_CONFIG"
    );
    let err = stderr(&o);
    assert!(err.contains("/nonexistent.toml"), "{err}");
    assert_eq!(
        err.matches("No such file or directory").count(),
        1,
        "the cause is printed once: {err}"
    );
}

#[test]
fn check_config_checks_the_model_files_and_the_runtime_library() {
    let ort = common::ort_library();
    let o = longmem(
        &["check-config", "config/default.toml"],
        &[("LONGMEM__MODEL__PATH", "/nope")],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("/nope/model.json"), "{}", stderr(&o));

    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    std::fs::copy(
        repo().join("models/sasrec-ml100k/model.json"),
        model.join("model.json"),
    )
    .unwrap();
    let o = longmem(
        &["check-config", "config/default.toml"],
        &[("LONGMEM__MODEL__PATH", model.to_str().unwrap())],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("is missing"), "{}", stderr(&o));

    // Every graph the manifest names is checked, the prefill graph included.
    for file in ["items.txt", "model.onnx", "step.onnx", "weights.bin"] {
        std::fs::copy(
            repo().join("models/sasrec-ml100k").join(file),
            model.join(file),
        )
        .unwrap();
    }
    let o = longmem(
        &["check-config", "config/default.toml"],
        &[("LONGMEM__MODEL__PATH", model.to_str().unwrap())],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("prefill.onnx"), "{}", stderr(&o));

    let o = longmem(
        &["check-config", "config/default.toml"],
        &[(
            "LONGMEM__MODEL__RUNTIME_LIBRARY",
            "/nonexistent/libonnxruntime.so",
        )],
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("model.runtime_library"),
        "{}",
        stderr(&o)
    );

    let o = longmem(
        &["check-config", "config/default.toml"],
        &[("LONGMEM__MODEL__RUNTIME_LIBRARY", ort.to_str().unwrap())],
    );
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn inspect_never_creates_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(dir.path(), "");
    let store = dir.path().join("store");
    let o = longmem(
        &["inspect", "--config", &config, "user", "u1"],
        &[("LONGMEM__STORE__PATH", store.to_str().unwrap())],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no store at"), "{}", stderr(&o));
    assert!(!store.exists(), "inspect created {}", store.display());
}

#[test]
fn unreadable_model_and_missing_runtime_are_clear_start_up_errors() {
    let dir = tempfile::tempdir().unwrap();
    let ort = common::ort_library();
    let config = config_with(dir.path(), "");
    let store = dir.path().join("store");
    let o = longmem(
        &["run", "--config", &config],
        &[
            ("LONGMEM__MODEL__PATH", "/nonexistent/model"),
            ("LONGMEM__MODEL__RUNTIME_LIBRARY", ort.to_str().unwrap()),
            ("LONGMEM__STORE__PATH", store.to_str().unwrap()),
            ("LONGMEM__METRICS__LISTEN", "127.0.0.1:0"),
        ],
    );
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("/nonexistent/model/model.json") && err.contains("cannot be read"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    let o = longmem(
        &["run", "--config", &config],
        &[
            (
                "LONGMEM__MODEL__RUNTIME_LIBRARY",
                "/nonexistent/libonnxruntime.so",
            ),
            ("LONGMEM__STORE__PATH", store.to_str().unwrap()),
            ("LONGMEM__METRICS__LISTEN", "127.0.0.1:0"),
        ],
    );
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("ONNX Runtime library not found") && err.contains("ORT_DYLIB_PATH"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn inspect_prints_a_users_memory() {
    let dir = tempfile::tempdir().unwrap();
    let store_path = dir.path().join("store");
    {
        let store = Store::open(&store_path, 1 << 20).unwrap();
        let mut memory = UserMemory::default();
        for (i, t) in [EventType::Click, EventType::Purchase, EventType::Click]
            .into_iter()
            .enumerate()
        {
            let item = format!("sku-{i}");
            memory.apply(
                &UserEvent::new(t, "alice", &item, 1_700_000_000_000 + i as i64),
                50,
            );
        }
        let mut batch = StoreBatch::default();
        batch.put_user("alice".into(), memory);
        store.commit(&batch).unwrap();
    }
    let config = config_with(dir.path(), "");
    let env = [("LONGMEM__STORE__PATH", store_path.to_str().unwrap())];
    let o = longmem(&["inspect", "--config", &config, "user", "alice"], &env);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["clicks"], 2);
    assert_eq!(v["purchases"], 1);
    assert_eq!(
        v["recent_items"],
        serde_json::json!(["sku-0", "sku-1", "sku-2"])
    );

    let o = longmem(&["inspect", "--config", &config, "user", "bob"], &env);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("`bob` has no stored memory"));
}
