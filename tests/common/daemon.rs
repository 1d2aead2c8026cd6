//! The daemon: its config for a test's broker and topics, the `longmem run` child process, and its
//! HTTP endpoint.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, ort_library, repo, wait_for, Broker, Topics};

/// Writes a daemon config for `broker` and `topics` into `dir`; returns (path, metrics address).
pub fn write_config(
    dir: &Path,
    broker: &Broker,
    topics: &Topics,
    group: &str,
    max_events: usize,
) -> (PathBuf, String) {
    let metrics = format!("127.0.0.1:{}", free_port());
    let text = format!(
        r#"
[kafka]
bootstrap_servers = "{bootstrap}"
group_id = "{group}"
produce_timeout_ms = 20000
[kafka.consumer]
"session.timeout.ms" = "6000"
"statistics.interval.ms" = "1000"
[topics]
input = ["{input}"]
recommendations = "{recs}"
alerts = "{alerts}"
dead_letter = "{dlq}"
[batch]
max_events = {max_events}
max_wait_ms = 5
[store]
path = "{store}"
history_len = 50
cache_bytes = 16777216
[model]
path = "{model}"
runtime_library = "{ort}"
[metrics]
listen = "{metrics}"
[supply]
forecaster = "{forecaster}"
"#,
        bootstrap = broker.bootstrap,
        input = topics.input,
        recs = topics.recommendations,
        alerts = topics.alerts,
        dlq = topics.dead_letter,
        store = dir.join("store").display(),
        model = repo().join("models/sasrec-ml100k").display(),
        ort = ort_library().display(),
        forecaster = repo().join("models/demand-supplygraph").display(),
    );
    let path = dir.join("longmem.toml");
    std::fs::write(&path, text).unwrap();
    (path, metrics)
}

/// The `longmem run` daemon as a child process.
pub struct Daemon {
    child: Child,
}

impl Daemon {
    pub fn start(config: &Path) -> Daemon {
        let child = Command::new(env!("CARGO_BIN_EXE_longmem"))
            .args(["run", "--config"])
            .arg(config)
            // Warnings only; LONGMEM_TEST_LOG (a tracing filter) shows more when a test is debugged.
            .env(
                "LONGMEM_LOG",
                std::env::var("LONGMEM_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start longmem");
        Daemon { child }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGKILL: no chance to flush or commit anything.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then waits for a clean exit.
    #[allow(unsafe_code)]
    pub fn stop(mut self) -> std::process::ExitStatus {
        // SAFETY: kill sends a signal to our own child; no memory is touched.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        let status = wait_for(
            "the daemon to exit after SIGTERM",
            Duration::from_secs(30),
            || self.child.try_wait().unwrap(),
        );
        std::mem::forget(self);
        status
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// HTTP GET on the daemon's metrics address: (status code, body).
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    http_request(addr, "GET", path, None, "", Duration::from_secs(5))
}

/// One HTTP/1.1 request on a fresh connection (`bearer` as an Authorization header, `body` as
/// JSON when not empty): the status and the body, or None if the daemon does not answer in `timeout`.
pub fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: &str,
    timeout: Duration,
) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let content = if body.is_empty() {
        String::new()
    } else {
        format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        )
    };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}{content}Connection: close\r\n\r\n{body}"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// The sum of a metric's series (every label set) on the daemon's /metrics page, if it answers.
pub fn metric(addr: &str, name: &str) -> Option<f64> {
    let (_, body) = http_get(addr, "/metrics")?;
    Some(
        body.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum(),
    )
}
