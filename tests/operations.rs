//! What operators deploy, checked by the tools they would use: the Dockerfile by dockerfilelint, the
//! Kubernetes manifests by kubernetes-validate against a pinned Kubernetes version, the alert rules
//! by promtool (syntax and unit tests), and the dashboard and rules against a running daemon's
//! /metrics so they never name a metric it does not export.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

/// The Kubernetes version the manifests are validated against.
const KUBERNETES_VERSION: &str = "1.33.0";

fn run(tool: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(tool)
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}); `bash scripts/fetch-tools.sh` and `make check-training` install it",
                tool.display()
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn yaml_documents(path: &str) -> Vec<serde_yaml::Value> {
    let text = std::fs::read_to_string(repo().join(path)).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

fn yaml(path: &str) -> serde_yaml::Value {
    yaml_documents(path).remove(0)
}

#[test]
fn dockerfile_passes_dockerfilelint_and_runs_as_a_non_root_user() {
    let lint = tool(
        "LONGMEM_DOCKERFILELINT",
        ".tools/npm/node_modules/.bin/dockerfilelint",
    );
    let (_, out) = run(&lint, &["--json", "deploy/Dockerfile"]);
    let report: serde_json::Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("dockerfilelint output is not JSON ({e}): {out}"));
    assert_eq!(report["totalIssues"], 0, "{report:#}");

    let text = std::fs::read_to_string(repo().join("deploy/Dockerfile")).unwrap();
    let runtime = text.rsplit("\nFROM ").next().unwrap();
    for needed in [
        "USER longmem",
        "ORT_DYLIB_PATH=",
        "HEALTHCHECK",
        "/healthz",
        "COPY models",
    ] {
        assert!(
            runtime.contains(needed),
            "the runtime stage lacks `{needed}`"
        );
    }
    assert!(
        text.matches("\nFROM ").count() >= 2,
        "multi-stage: the build stays out of the image"
    );
    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).unwrap();
    for path in ["target/", ".tools/", ".git/"] {
        assert!(ignore.lines().any(|l| l == path), ".dockerignore: {path}");
    }
}

#[test]
fn kubernetes_manifests_validate_and_agree_with_the_config() {
    let validate = tool(
        "LONGMEM_KUBERNETES_VALIDATE",
        ".tools/checks/bin/kubernetes-validate",
    );
    let manifests: Vec<String> = std::fs::read_dir(repo().join("deploy/k8s"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| p.strip_prefix(repo()).unwrap().display().to_string())
        .collect();
    let mut args = vec!["--strict", "-k", KUBERNETES_VERSION];
    args.extend(manifests.iter().map(String::as_str));
    let (ok, out) = run(&validate, &args);
    assert!(ok, "kubernetes-validate failed:\n{out}");
    // Every built-in kind passed against the schema; only KEDA's and kustomize's own kinds have none
    // there. KEDA's are checked against KEDA's own CRD schemas instead.
    let passed = out.lines().filter(|l| l.contains(" passed for ")).count();
    assert_eq!(passed, 5, "{out}");
    for line in out.lines().filter(|l| l.contains("Couldn't find schema")) {
        assert!(
            line.contains("keda.sh/") || line.contains("kustomize.config.k8s.io"),
            "{line}"
        );
    }
    let modules = tool("LONGMEM_NODE_MODULES", ".tools/npm/node_modules");
    let (ok, out) = run(
        Path::new("node"),
        &[
            "scripts/validate-keda.mjs",
            modules.to_str().unwrap(),
            "deploy/k8s/keda-scaledobject.yaml",
        ],
    );
    assert!(ok, "KEDA's schemas reject the manifest:\n{out}");
    assert!(out.contains("2 passed, 0 failed"), "{out}");

    // The ConfigMap is config/production.toml, verbatim.
    let cm = yaml("deploy/k8s/configmap.yaml");
    let production = std::fs::read_to_string(repo().join("config/production.toml")).unwrap();
    assert_eq!(cm["data"]["longmem.toml"].as_str().unwrap(), production);
    let config: toml::Value = toml::from_str(&production).unwrap();

    // StatefulSet: a volume per pod for the store, probes on /readyz and /healthz, resources set.
    let sts = yaml("deploy/k8s/statefulset.yaml");
    let pod = &sts["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert!(container["resources"]["requests"]["memory"].is_string());
    assert!(container["resources"]["limits"]["memory"].is_string());
    let store_dir = config["store"]["path"].as_str().unwrap();
    let claim = sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"].clone();
    let store_mount = container["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["name"] == claim)
        .expect("the volume claim is mounted");
    assert!(store_dir.starts_with(store_mount["mountPath"].as_str().unwrap()));
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let secret = yaml("deploy/k8s/secret.yaml");
    let secret_name = secret["metadata"]["name"].as_str().unwrap();
    let env = container["env"].as_sequence().unwrap();
    for var in [
        "LONGMEM__KAFKA__PROPERTIES__SASL_USERNAME",
        "LONGMEM__KAFKA__PROPERTIES__SASL_PASSWORD",
    ] {
        let e = env.iter().find(|e| e["name"] == var).expect(var);
        let key = e["valueFrom"]["secretKeyRef"]["key"].as_str().unwrap();
        assert_eq!(e["valueFrom"]["secretKeyRef"]["name"], secret_name);
        assert!(
            secret["stringData"][key].is_string(),
            "{var}: the Secret has no {key}"
        );
    }

    // PDB and KEDA select this StatefulSet; KEDA scales on this consumer group's lag and never
    // beyond the input partitions.
    let labels = &sts["spec"]["selector"]["matchLabels"];
    assert_eq!(
        &yaml("deploy/k8s/pdb.yaml")["spec"]["selector"]["matchLabels"],
        labels
    );
    let keda = yaml_documents("deploy/k8s/keda-scaledobject.yaml");
    let scaled = keda.iter().find(|d| d["kind"] == "ScaledObject").unwrap();
    assert_eq!(scaled["spec"]["scaleTargetRef"]["kind"], "StatefulSet");
    assert_eq!(
        scaled["spec"]["scaleTargetRef"]["name"],
        sts["metadata"]["name"]
    );
    let trigger = &scaled["spec"]["triggers"][0];
    assert_eq!(trigger["type"], "kafka");
    assert_eq!(
        trigger["metadata"]["consumerGroup"].as_str(),
        config["kafka"]["group_id"].as_str()
    );
    assert_eq!(trigger["metadata"]["allowIdleConsumers"], "false");
    assert!(scaled["spec"]["maxReplicaCount"].as_u64().unwrap() <= 12);
    let auth = keda
        .iter()
        .find(|d| d["kind"] == "TriggerAuthentication")
        .unwrap();
    assert_eq!(
        trigger["authenticationRef"]["name"],
        auth["metadata"]["name"]
    );
    for target in auth["spec"]["secretTargetRef"].as_sequence().unwrap() {
        assert_eq!(target["name"], secret_name);
        let key = target["key"].as_str().unwrap();
        assert!(secret["stringData"][key].is_string(), "KEDA reads {key}");
    }
}

#[test]
fn compose_stack_wires_kafka_longmem_prometheus_and_grafana() {
    let compose = yaml("deploy/docker-compose.yml");
    let services = &compose["services"];
    let roles = services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]
        .as_str()
        .unwrap();
    assert!(roles.contains("controller"), "KRaft, no ZooKeeper");
    assert_eq!(
        services["longmem"]["environment"]["LONGMEM__KAFKA__BOOTSTRAP_SERVERS"],
        "kafka:9092"
    );
    let deploy = repo().join("deploy");
    let dockerfile = services["longmem"]["build"]["dockerfile"].as_str().unwrap();
    let context = services["longmem"]["build"]["context"].as_str().unwrap();
    assert!(deploy.join(context).join(dockerfile).is_file());
    for service in ["prometheus", "grafana"] {
        for volume in services[service]["volumes"].as_sequence().unwrap() {
            let host = volume.as_str().unwrap().split(':').next().unwrap();
            assert!(deploy.join(host).exists(), "{service} mounts {host}");
        }
    }
    let prometheus = yaml("deploy/prometheus/prometheus.yml");
    assert_eq!(
        prometheus["scrape_configs"][0]["static_configs"][0]["targets"][0],
        "longmem:9464"
    );
    assert_eq!(prometheus["scrape_configs"][0]["job_name"], "longmem");
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let promtool = tool("LONGMEM_PROMTOOL", ".tools/bin/promtool");
    let (ok, out) = run(
        &promtool,
        &["check", "rules", "deploy/prometheus/alerts.yml"],
    );
    assert!(ok, "{out}");
    assert!(out.contains("SUCCESS: 12 rules found"), "{out}");
    let (ok, out) = run(
        &promtool,
        &["test", "rules", "deploy/prometheus/alerts_test.yml"],
    );
    assert!(ok, "{out}");
    // Every alert links to a section of the runbook that exists (GitHub's heading anchors).
    let runbook = std::fs::read_to_string(repo().join("docs/operations.md")).unwrap();
    let anchors: BTreeSet<String> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("### "))
        .map(|h| {
            h.to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == '-')
                .collect()
        })
        .collect();
    let rules = yaml("deploy/prometheus/alerts.yml");
    for rule in rules["groups"][0]["rules"].as_sequence().unwrap() {
        let link = rule["annotations"]["runbook"].as_str().unwrap();
        let (page, anchor) = link.split_once('#').unwrap();
        assert_eq!(page, "docs/operations.md");
        assert!(
            anchors.contains(anchor),
            "{}: docs/operations.md has no section #{anchor}",
            rule["alert"].as_str().unwrap()
        );
    }
}

/// Metric names in PromQL text: `longmem_…` (and Prometheus's own `up`).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("longmem_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        names.insert(name);
    }
    names
}

#[test]
fn dashboard_and_alert_rules_use_only_metrics_the_daemon_exports() {
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("deploy/grafana/dashboards/longmem.json")).unwrap(),
    )
    .unwrap();
    let mut dashboard_exprs = String::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            dashboard_exprs.push_str(target["expr"].as_str().unwrap());
            dashboard_exprs.push('\n');
        }
    }
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(q) = var["query"]["query"].as_str() {
            dashboard_exprs.push_str(q);
        }
    }
    let rules = std::fs::read_to_string(repo().join("deploy/prometheus/alerts.yml")).unwrap();
    let used: BTreeSet<String> = metric_names(&dashboard_exprs)
        .union(&metric_names(&rules))
        .cloned()
        .collect();
    // The panels the runbook describes are all there.
    for needed in [
        "longmem_events_consumed_total",
        "longmem_end_to_end_latency_seconds_bucket",
        "longmem_consumer_lag_messages",
        "longmem_events_rejected_total",
        "longmem_batch_size_events_bucket",
        "longmem_inference_duration_seconds_bucket",
        "longmem_store_size_bytes",
        "longmem_execution_provider_info",
        "longmem_model_info",
    ] {
        assert!(
            metric_names(&dashboard_exprs).contains(needed),
            "no dashboard panel reads {needed}"
        );
    }

    // A running daemon, after some traffic.
    let broker = Broker::start();
    let topics = Topics::create(&broker, "ops", 2);
    let dir = tempfile::tempdir().unwrap();
    let (config, metrics_addr) = write_config(dir.path(), &broker, &topics, "ops", 64);
    let daemon = Daemon::start(&config);
    broker.produce(&topics.input, &movielens_messages(200));
    let page = wait_for(
        "the daemon to export lag and latency after processing the events",
        Duration::from_secs(60),
        || {
            let (code, body) = http_get(&metrics_addr, "/metrics")?;
            (code == 200
                && body.contains("longmem_consumer_lag_messages{")
                && body.contains("longmem_end_to_end_latency_seconds_count"))
            .then_some(body)
        },
    );
    let exported: BTreeSet<&str> = page
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let missing: Vec<&String> = used
        .iter()
        .filter(|n| !exported.contains(n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard or the alert rules use metrics the daemon does not export: {missing:?}\nexported: {exported:?}"
    );
    assert!(daemon.stop().success());
}
