//! Rolling models into a running daemon on a real broker (tansu): by HTTP and by SIGHUP under
//! steady load, a corrupt candidate refused, a rollback, and the admin API's guards.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const TOKEN: &str = "test-admin-token-7f3a";

/// POST `body` to the admin API: (status, JSON answer).
fn post(addr: &str, path: &str, body: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    // A candidate is loaded and checked before the answer: give it time.
    let (status, body) = http_request(addr, "POST", path, token, body, Duration::from_secs(120))
        .unwrap_or_else(|| panic!("no answer from the admin API at {addr}{path}"));
    (
        status,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
    )
}

/// The version a shipped model's manifest gives it.
fn shipped_version(name: &str) -> String {
    let path = repo().join("models").join(name).join("model.json");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    manifest["version"].as_str().unwrap().to_string()
}

fn roll_body(model: &Path) -> String {
    serde_json::json!({ "path": model }).to_string()
}

/// A copy of a shipped model directory, to break.
fn copy_model(name: &str, into: &Path) -> PathBuf {
    let from = repo().join("models").join(name);
    let to = into.join(name);
    std::fs::create_dir_all(&to).unwrap();
    for entry in std::fs::read_dir(&from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
    to
}

#[test]
fn models_roll_by_http_and_sighup_under_load_refuse_corrupt_candidates_and_roll_back() {
    let broker = Broker::start();
    let topics = Topics::create(&broker, "rollout", 2);
    let dir = tempfile::tempdir().unwrap();
    let (config, metrics_addr) = write_config(dir.path(), &broker, &topics, "rollout", 64);
    let admin_addr = format!("127.0.0.1:{}", free_port());
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let mut text = std::fs::read_to_string(&config).unwrap();
    // The two models' time per batch differs by about 3x either way (SASRec steps MovieLens's bursts
    // of one user's events in one chunk call, GRU4Rec in rounds): allow it (a refusal by a limit is
    // the next test's).
    text.push_str(&format!(
        "[admin]\nlisten = \"{admin_addr}\"\ntoken_file = \"{}\"\n[rollout]\nmax_p99_ratio = 12.0\n",
        token_file.display()
    ));
    std::fs::write(&config, &text).unwrap();
    let gru4rec = repo().join("models/gru4rec-ml100k");

    let daemon = Daemon::start(&config);
    wait_for("the daemon to be ready", Duration::from_secs(60), || {
        http_get(&metrics_addr, "/readyz").filter(|(code, _)| *code == 200)
    });

    // Steady load: MovieLens events at about 400/s while the models change, until the last
    // rollout is done and one more chunk follows it (so every stage answers some events however
    // long the rollouts take on a busy machine). The flag is read before a chunk is sent: a chunk
    // whose send began before the rollback answered may be scored wholly by the model before it.
    // Returns how many were sent.
    let rollouts_done = Arc::new(AtomicBool::new(false));
    let producing = {
        let producer = broker.producer();
        let topic = topics.input.clone();
        let messages = movielens_messages(40_000);
        let done = rollouts_done.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut sent = 0;
            for (i, chunk) in messages.chunks(200).enumerate() {
                let due = started + Duration::from_millis(500 * i as u64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let last = done.load(Ordering::SeqCst);
                produce_with(&producer, &topic, chunk);
                sent += chunk.len();
                if last {
                    return sent;
                }
            }
            panic!(
                "the load ran out of MovieLens events ({sent} sent) before the rollouts were done"
            );
        })
    };
    std::thread::sleep(Duration::from_secs(3));

    // The guards: no token, a wrong one, and the metrics port, which has no admin API.
    let (code, _) = post(&admin_addr, "/admin/model", &roll_body(&gru4rec), None);
    assert_eq!(code, 401, "no token");
    let (code, _) = post(
        &admin_addr,
        "/admin/model",
        &roll_body(&gru4rec),
        Some("wrong"),
    );
    assert_eq!(code, 401, "a wrong token");
    let (code, _) = post(
        &metrics_addr,
        "/admin/model",
        &roll_body(&gru4rec),
        Some(TOKEN),
    );
    assert_eq!(code, 404, "the metrics listener serves no admin API");
    let (code, answer) = post(&admin_addr, "/admin/model/rollback", "", Some(TOKEN));
    assert_eq!(code, 409, "nothing to roll back to yet: {answer}");

    // 1. By HTTP: sasrec → gru4rec.
    let (code, answer) = post(
        &admin_addr,
        "/admin/model",
        &roll_body(&gru4rec),
        Some(TOKEN),
    );
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["result"], "promoted", "{answer}");
    assert_eq!(answer["live"]["name"], "gru4rec-ml100k");
    assert_eq!(answer["previous"]["name"], "sasrec-ml100k");
    let test = &answer["self_test"];
    assert!(test["users"].as_u64().unwrap() > 0, "{answer}");
    assert!(
        test["step_full_same_top10"].as_f64().unwrap() >= 0.99,
        "{answer}"
    );
    // It scored live batches in shadow first (rollout.shadow_events, default 1,000).
    let shadow = &answer["shadow"];
    assert!(shadow["events"].as_u64().unwrap() > 0, "{answer}");
    let overlap = shadow["top10_overlap"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&overlap), "{answer}");
    assert!(
        shadow["candidate_p99_ms"].as_f64().unwrap() > 0.0,
        "{answer}"
    );
    assert_eq!(shadow["errors"], 0);

    // Shadow only: compare sasrec on live traffic without promoting it.
    let body = serde_json::json!({ "path": repo().join("models/sasrec-ml100k"), "promote": false });
    let (code, answer) = post(&admin_addr, "/admin/model", &body.to_string(), Some(TOKEN));
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["result"], "checked", "{answer}");
    assert_eq!(answer["live"]["name"], "gru4rec-ml100k", "not promoted");
    assert_eq!(answer["candidate"]["name"], "sasrec-ml100k");
    assert!(answer["shadow"]["events"].as_u64().unwrap() > 0, "{answer}");

    // 2. By SIGHUP: back to the config file's model (sasrec).
    // SAFETY: a signal to our own child.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(daemon.pid(), libc::SIGHUP)
    };
    wait_for(
        "the SIGHUP rollout to promote",
        Duration::from_secs(60),
        || {
            let (_, page) = http_get(&metrics_addr, "/metrics")?;
            page.contains("longmem_model_reloads_total{result=\"promoted\"} 2")
                .then_some(())
        },
    );
    let (_, page) = http_get(&metrics_addr, "/metrics").unwrap();
    for (model, live) in [("sasrec-ml100k", 1), ("gru4rec-ml100k", 0)] {
        let series = format!(
            "longmem_model_info{{name=\"{model}\",version=\"{}\",role=\"live\"}} {live}",
            shipped_version(model)
        );
        assert!(page.contains(&series), "{series} in\n{page}");
    }

    // 3. Corrupt candidates are refused; the live model keeps answering.
    let broken = tempfile::tempdir().unwrap();
    let truncated = copy_model("gru4rec-ml100k", &broken.path().join("truncated"));
    let graph = std::fs::read(truncated.join("model.onnx")).unwrap();
    std::fs::write(truncated.join("model.onnx"), &graph[..graph.len() / 3]).unwrap();
    let no_items = copy_model("gru4rec-ml100k", &broken.path().join("no-items"));
    std::fs::remove_file(no_items.join("items.txt")).unwrap();
    // A graph whose outputs are not the shape its manifest says: one item more in the manifest
    // (and the vocabulary) than the graph scores.
    let wrong_shape = copy_model("gru4rec-ml100k", &broken.path().join("wrong-shape"));
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(wrong_shape.join("model.json")).unwrap()).unwrap();
    manifest["n_items"] = serde_json::json!(manifest["n_items"].as_u64().unwrap() + 1);
    std::fs::write(wrong_shape.join("model.json"), manifest.to_string()).unwrap();
    let mut items = std::fs::read_to_string(wrong_shape.join("items.txt")).unwrap();
    items.push_str("an-item-the-graph-does-not-score\n");
    std::fs::write(wrong_shape.join("items.txt"), items).unwrap();
    for bad in [&truncated, &no_items, &wrong_shape] {
        let (code, answer) = post(&admin_addr, "/admin/model", &roll_body(bad), Some(TOKEN));
        assert_eq!(code, 409, "{}: {answer}", bad.display());
        assert_eq!(answer["result"], "refused");
        assert_eq!(answer["live"]["name"], "sasrec-ml100k");
        assert!(!answer["reason"].as_str().unwrap().is_empty());
    }
    let (code, answer) = post(&admin_addr, "/admin/model", "{\"path\": 3}", Some(TOKEN));
    assert_eq!(code, 400, "{answer}");

    // 4. Rollback: to the model the last promotion replaced (gru4rec), from memory.
    let (code, answer) = post(&admin_addr, "/admin/model/rollback", "", Some(TOKEN));
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["result"], "rolled_back");
    assert_eq!(answer["live"]["name"], "gru4rec-ml100k");

    rollouts_done.store(true, Ordering::SeqCst);
    let total = producing.join().unwrap();
    let mut recs = Vec::new();
    let mut reader = broker.reader(&topics.recommendations);
    let deadline = Instant::now() + Duration::from_secs(120);
    while recs.len() < total && Instant::now() < deadline {
        reader.poll_into(&mut recs, Duration::from_secs(1));
    }
    daemon.stop();

    // Every input offset has its answer.
    let answered = answered_sources(&recs);
    assert_eq!(answered.len(), total, "one recommendation per event");
    // Each answer names the model live when its batch was scored: in the order they were
    // emitted, the models follow the rollouts (sasrec, gru4rec, sasrec, gru4rec), never back.
    let order = [
        "sasrec-ml100k",
        "gru4rec-ml100k",
        "sasrec-ml100k",
        "gru4rec-ml100k",
    ];
    let mut emitted: Vec<(i64, String)> = recs
        .iter()
        .map(|r| {
            let v = r.json();
            (
                v["emitted_at_ms"].as_i64().unwrap(),
                v["model"]["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    emitted.sort();
    // Batches a millisecond apart may share a timestamp: within one, two neighbouring stages.
    let mut stage = 0;
    for group in emitted.chunk_by(|a, b| a.0 == b.0) {
        let names: std::collections::BTreeSet<&str> =
            group.iter().map(|(_, n)| n.as_str()).collect();
        while !names.contains(order[stage]) {
            stage += 1;
            assert!(
                stage < order.len(),
                "answers by {names:?} at {} ms after the rollouts had moved past them",
                group[0].0
            );
        }
        if names.len() > 1 {
            stage += 1;
            assert!(
                stage < order.len() && names.contains(order[stage]) && names.len() == 2,
                "answers by {names:?} at {} ms: more models than one rollout apart",
                group[0].0
            );
        }
    }
    assert_eq!(stage, order.len() - 1, "every rollout answered some events");
}

#[test]
fn a_candidate_that_fails_its_shadow_is_refused_and_the_live_model_keeps_answering() {
    let broker = Broker::start();
    let topics = Topics::create(&broker, "shadowfail", 1);
    let dir = tempfile::tempdir().unwrap();
    let (config, metrics_addr) = write_config(dir.path(), &broker, &topics, "shadowfail", 64);
    let admin_addr = format!("127.0.0.1:{}", free_port());
    let mut text = std::fs::read_to_string(&config).unwrap();
    // Two different models agree on far less than 99% of their top 10. The p99 check is set out of
    // the way: on MovieLens in time order the live model steps bursts in one chunk call, which
    // gru4rec (no chunk graph) does not, so its time per batch may well be over twice the live one's.
    text.push_str(&format!(
        "[admin]\nlisten = \"{admin_addr}\"\n[rollout]\nshadow_events = 300\nmin_top10_overlap = 0.99\nmax_p99_ratio = 1000.0\n"
    ));
    std::fs::write(&config, &text).unwrap();
    let daemon = Daemon::start(&config);
    wait_for("the daemon to be ready", Duration::from_secs(60), || {
        http_get(&metrics_addr, "/readyz").filter(|(code, _)| *code == 200)
    });
    let messages = movielens_messages(3_000);
    let producing = {
        let producer = broker.producer();
        let topic = topics.input.clone();
        let messages = messages.clone();
        std::thread::spawn(move || {
            for chunk in messages.chunks(100) {
                produce_with(&producer, &topic, chunk);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    let gru4rec = repo().join("models/gru4rec-ml100k");
    let (code, answer) = post(&admin_addr, "/admin/model", &roll_body(&gru4rec), None);
    assert_eq!(code, 409, "{answer}");
    assert_eq!(answer["result"], "refused");
    assert_eq!(answer["live"]["name"], "sasrec-ml100k");
    assert!(
        answer["reason"].as_str().unwrap().contains("top 10 shared"),
        "{answer}"
    );
    assert!(answer["shadow"]["top10_overlap"].as_f64().unwrap() < 0.99);
    producing.join().unwrap();
    let mut recs = Vec::new();
    let mut reader = broker.reader(&topics.recommendations);
    let deadline = Instant::now() + Duration::from_secs(60);
    while recs.len() < messages.len() && Instant::now() < deadline {
        reader.poll_into(&mut recs, Duration::from_secs(1));
    }
    daemon.stop();
    assert_eq!(answered_sources(&recs).len(), messages.len());
    assert!(
        recs.iter()
            .all(|r| r.json()["model"]["name"] == "sasrec-ml100k"),
        "only the live model published"
    );
}
