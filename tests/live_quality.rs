//! `longmem eval recommendations` on a real broker: the daemon's live recommendations on
//! MovieLens-100k score what the model card says the model scores offline.

mod common;

use std::process::Command;

use common::{ort_library, repo, Broker};

#[test]
fn live_recommendations_match_the_model_cards_offline_figures() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("eval.json");
    let out = Command::new(env!("CARGO_BIN_EXE_longmem"))
        .args(["eval", "recommendations", "--brokers", &broker.bootstrap])
        .args(["--model", "models/gru4rec-ml100k", "--json"])
        .arg(&json)
        .env("ORT_DYLIB_PATH", ort_library())
        .current_dir(repo())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let figures: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    // Every user with 3+ ratings is a held-out case, and every rating after a user's first is checked.
    assert_eq!(figures["held_out"]["cases"], 943, "{figures}");
    assert_eq!(figures["every_event"]["cases"], 100_000 - 943, "{figures}");
    assert_eq!(figures["events"], 100_000, "{figures}");
    let card = &figures["card_full_recent"];
    for metric in ["hr_at_10", "ndcg_at_10"] {
        let live = figures["held_out"][metric].as_f64().unwrap();
        let offline = card[metric].as_f64().unwrap();
        assert!(
            (live - offline).abs() <= 0.01 * offline,
            "{metric}: live {live} vs card {offline}"
        );
    }
}
