//! `longmem bench` end to end at a tiny size on tansu: it measures what it reports (throughput,
//! ceilings, latency phases, memory) and writes the JSON and Markdown. Numbers are not judged here:
//! speed is the benchmark's business, not a timed test's.

mod common;

use std::process::Command;

use common::{ort_library, repo, tool};

#[test]
fn bench_measures_the_daemon_and_its_ceilings_and_writes_its_report() {
    let out_dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_longmem"))
        .args(["bench", "--events", "3000", "--users", "500"])
        .args(["--models", "models/gru4rec-ml100k", "--modes", "step,full"])
        .args(["--phase-seconds", "1", "--out"])
        .arg(out_dir.path())
        .env("ORT_DYLIB_PATH", ort_library())
        .env("LONGMEM_TANSU", tool("LONGMEM_TANSU", ".tools/bin/tansu"))
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.path().join("bench.json")).unwrap()).unwrap();
    assert!(report["passthrough_per_s"].as_f64().unwrap() > 0.0);
    assert!(report["users"].as_u64().unwrap() > 100, "{report}");
    let runs = report["runs"].as_array().unwrap();
    let modes: Vec<&str> = runs.iter().map(|r| r["mode"].as_str().unwrap()).collect();
    assert_eq!(modes, ["step", "full"]);
    for run in runs {
        assert_eq!(run["events"], 3000);
        for field in [
            "events_per_s",
            "cpu_seconds_per_million",
            "mean_batch",
            "store_bytes_per_user",
            "model_rows_per_s_at_mean_batch",
            "model_rows_per_s_at_256",
            "store_events_per_s",
            "events_per_s_from_ready",
        ] {
            assert!(run[field].as_f64().unwrap() > 0.0, "{field}: {run}");
        }
        // The drain is timed from its first batch; from ready it includes the wait for that batch.
        let wait = run["first_batch_after_ready_s"].as_f64().unwrap();
        assert!(wait >= 0.0, "{run}");
        assert!(
            run["events_per_s"].as_f64().unwrap()
                >= run["events_per_s_from_ready"].as_f64().unwrap(),
            "{run}"
        );
        let phases = run["latency"].as_array().unwrap();
        let fractions: Vec<f64> = phases
            .iter()
            .map(|p| p["offered_fraction"].as_f64().unwrap())
            .collect();
        assert_eq!(fractions, [0.25, 0.5, 0.75, 1.0]);
        for p in phases {
            let (p50, p99, max) = (
                p["p50_ms"].as_f64().unwrap(),
                p["p99_ms"].as_f64().unwrap(),
                p["max_ms"].as_f64().unwrap(),
            );
            assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{p}");
            // The daemon's share starts later than the Kafka timestamp and ends at the same
            // acknowledgement, event by event, so each of its quantiles is at most the whole's.
            let (own50, own99) = (
                p["daemon_p50_ms"].as_f64().unwrap(),
                p["daemon_p99_ms"].as_f64().unwrap(),
            );
            assert!(0.0 < own50 && own50 <= own99, "{p}");
            assert!(own50 <= p50 && own99 <= p99, "{p}");
        }
    }
    // The step model keeps a 64-float state per user, stored as f16 by default; full mode none.
    assert_eq!(runs[0]["state_bytes_per_user"], 128);
    assert_eq!(runs[1]["state_bytes_per_user"], 0);
    let markdown = std::fs::read_to_string(out_dir.path().join("bench.md")).unwrap();
    assert!(markdown.contains("| gru4rec-ml100k | step |"), "{markdown}");
    assert!(markdown.contains("of passthrough"), "{markdown}");
}
