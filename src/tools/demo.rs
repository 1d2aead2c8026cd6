//! `longmem demo`: the whole daemon on real data, with nothing to install beforehand.
//!
//! Starts an embedded broker (librdkafka's in-process mock cluster, with enough partitions that its
//! per-partition retention drops nothing) unless `--brokers` names a real one, streams MovieLens-100k
//! into the input topic in timestamp order, runs the pipeline on it and prints a summary. Everything
//! it starts stops before it returns.
//! How a MovieLens rating becomes an event: [`crate::tools::datasets`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use indicatif::{ProgressBar, ProgressStyle};

use crate::config::Config;
use crate::event::Recommendation;
use crate::pipeline::RunStats;
use crate::tools::datasets::{movielens_events, movielens_titles, ReplayEvent};
use crate::tools::harness::{
    produce_all, producer, read_topic, Broker, InProcessDaemon, Partitions,
};

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// A real Kafka to use instead of the embedded broker (host:port,...); the run creates topics
    /// of its own there, named after the configured ones with a `.demo-<unix time>` suffix.
    #[arg(long)]
    pub brokers: Option<String>,
    /// Base configuration; the demo overrides brokers, store path and topics' partitions.
    #[arg(long, default_value = "config/default.toml")]
    pub config: PathBuf,
    /// MovieLens-100k in RecBole atomic files.
    #[arg(long, default_value = "../shared/data/seqrec/recbole_ml100k")]
    pub data: PathBuf,
    /// Events per second offered to the daemon (0: as fast as the producer can, which measures the
    /// pipeline's capacity; latency then includes the backlog).
    #[arg(long, default_value_t = 3_000)]
    pub rate: u64,
    /// Stream only the first N events (0: all 100,000).
    #[arg(long, default_value_t = 0)]
    pub limit: usize,
    /// Broken messages mixed into the stream, to show the dead-letter path.
    #[arg(long, default_value_t = 40)]
    pub bad: usize,
    /// Users shown with their recommendations.
    #[arg(long, default_value_t = 3)]
    pub samples: usize,
}

/// Broken messages of several kinds, keyed so each lands on a real partition.
fn bad_messages(n: usize, sample: &ReplayEvent) -> Vec<(Option<String>, Vec<u8>)> {
    let good = sample.to_json();
    let user = Some(sample.user_id.clone());
    let kinds: Vec<(Option<String>, Vec<u8>)> = vec![
        (user.clone(), good.as_bytes()[..good.len() / 2].to_vec()),
        (None, good.clone().into_bytes()),
        (
            user.clone(),
            good.replace("\"timestamp_ms\":", "\"timestamp_ms\":9").into_bytes(),
        ),
        (user.clone(), vec![0xc3, 0x28, 0xa0, 0xa1]),
        (
            user.clone(),
            format!(
                r#"{{"event_type":"purchase","user_id":"{}","item_id":"1","timestamp_ms":{},"quantity":-3}}"#,
                sample.user_id, sample.timestamp_ms
            )
            .into_bytes(),
        ),
    ];
    (0..n).map(|i| kinds[i % kinds.len()].clone()).collect()
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    let titles = movielens_titles(&args.data);
    print!("longmem demo: ");
    let replay = replay_movielens(&args, config)?;
    print_summary(&args, &replay, &titles);
    Ok(())
}

/// A MovieLens-100k replay through the daemon: the stream, what the daemon answered (read back from
/// the broker) and its running totals.
pub struct Replay {
    pub events: Vec<ReplayEvent>,
    pub recommendations: Vec<Recommendation>,
    pub stats: Arc<RunStats>,
    pub produced: u64,
    pub elapsed: Duration,
}

/// Streams MovieLens-100k (with `args.bad` broken messages) through an in-process daemon running
/// `config` on the embedded broker or `args.brokers`, and reads its recommendations back.
pub fn replay_movielens(args: &DemoArgs, mut config: Config) -> anyhow::Result<Replay> {
    let mut events = movielens_events(&args.data)?;
    if args.limit > 0 {
        events.truncate(args.limit);
    }
    if args.brokers.is_some() {
        // A real broker may hold earlier runs' topics: this run gets topics of its own.
        let run = format!("demo-{}", crate::pipeline::now_ms() / 1000);
        config.topics.suffix_with(&run);
    }
    // The mock keeps ≤ 100k messages or 5 MiB per partition: spread 100k events (and their
    // outputs) wide.
    let partitions = Partitions {
        input: 8,
        recommendations: 32,
        alerts: 4,
        dead_letter: 4,
    };
    config.kafka.group_id = format!("longmem-demo-{}", std::process::id());
    let broker = Broker::start(args.brokers.as_deref(), &mut config, partitions)?;
    let store_dir = tempfile::Builder::new().prefix("longmem-demo-").tempdir()?;
    config.store.path = store_dir.path().to_path_buf();

    println!(
        "{} MovieLens-100k ratings (rating ≥ 4 → purchase, else click) at {} on {}, model {}",
        events.len(),
        if args.rate == 0 {
            "full speed".to_string()
        } else {
            format!("{} events/s", args.rate)
        },
        broker.name(),
        config.model.path.display(),
    );
    let daemon = InProcessDaemon::start(&config)?;
    let outcome = drive(args, &config, &events, &daemon);
    let stats = daemon.stats.clone();
    let pipeline_result = daemon.stop()?;
    let (produced, elapsed) = outcome?;
    pipeline_result?;

    // Read what the daemon produced back from the broker.
    let recommendations = read_topic(&broker.bootstrap, &config.topics.recommendations)?;
    Ok(Replay {
        events,
        recommendations,
        stats,
        produced,
        elapsed,
    })
}

/// Waits for the daemon to be ready, streams the events, waits until all are processed.
fn drive(
    args: &DemoArgs,
    config: &Config,
    events: &[ReplayEvent],
    daemon: &InProcessDaemon,
) -> anyhow::Result<(u64, Duration)> {
    daemon.wait_ready()?;
    let stats = &daemon.stats;
    let producer = producer(&config.kafka.bootstrap_servers)?;
    // The stream: every event keyed by its user, with the broken messages spread evenly through it.
    let bad = match events.get(events.len() / 2) {
        Some(sample) => bad_messages(args.bad, sample),
        None => Vec::new(),
    };
    let bad_every = events.len() / bad.len().max(1) + 1;
    let mut bad_iter = bad.into_iter();
    let mut stream: Vec<(Option<String>, Vec<u8>)> = Vec::with_capacity(events.len() + args.bad);
    for (i, e) in events.iter().enumerate() {
        stream.push((Some(e.user_id.clone()), e.to_json().into_bytes()));
        if i % bad_every == bad_every - 1 {
            stream.extend(bad_iter.next());
        }
    }
    stream.extend(bad_iter);

    let total = stream.len() as u64;
    let bar = ProgressBar::new(total).with_style(
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message("streaming");
    let started = Instant::now();
    let messages = stream
        .iter()
        .map(|(key, payload)| (key.as_deref(), payload));
    let rate = args.rate as f64;
    produce_all(
        &producer,
        &config.topics.input[0],
        messages,
        rate,
        &bar,
        "demo event",
    )?;
    bar.set_position(total);
    bar.set_message("processing");
    let deadline = Instant::now() + Duration::from_secs(300);
    while stats.messages.load(Ordering::Relaxed) < total {
        if daemon.is_finished() {
            bail!("the daemon stopped before it processed every event (see the error above)");
        }
        if Instant::now() > deadline {
            bail!(
                "only {} of {total} events processed after 5 minutes",
                stats.messages.load(Ordering::Relaxed)
            );
        }
        bar.set_position(stats.messages.load(Ordering::Relaxed));
        std::thread::sleep(Duration::from_millis(50));
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    Ok((total, elapsed))
}

fn print_summary(args: &DemoArgs, replay: &Replay, titles: &HashMap<String, String>) {
    let Replay {
        events,
        recommendations: recs,
        stats,
        produced,
        elapsed,
    } = replay;
    let processed = stats.messages.load(Ordering::Relaxed);
    let busy = Duration::from_nanos(stats.busy_nanos.load(Ordering::Relaxed));
    println!();
    println!("== longmem demo summary ==");
    println!("events streamed            {produced}");
    println!(
        "events processed           {processed} in {:.1} s wall ({:.0} events/s offered and sustained)",
        elapsed.as_secs_f64(),
        processed as f64 / elapsed.as_secs_f64()
    );
    println!(
        "pipeline capacity          {:.0} events/s (events per second of busy pipeline time, {:.2} s busy)",
        processed as f64 / busy.as_secs_f64().max(1e-9),
        busy.as_secs_f64()
    );
    let stages: Vec<String> = stats
        .stage_seconds()
        .iter()
        .map(|(s, secs)| format!("{s} {:.0}%", 100.0 * secs / busy.as_secs_f64().max(1e-9)))
        .collect();
    println!("busy time by stage         {}", stages.join(", "));
    if let Some((p50, p99)) = stats.latency_ms() {
        println!("end-to-end latency         p50 {p50:.1} ms, p99 {p99:.1} ms (Kafka timestamp → output acknowledged)");
    }
    if let Some((p50, p99)) = stats.daemon_latency_ms() {
        println!("  of it in the daemon      p50 {p50:.1} ms, p99 {p99:.1} ms (taken off the consumer → output acknowledged)");
    }
    println!(
        "recommendations produced   {} acknowledged, {} read back from the topic",
        stats.recommendations.load(Ordering::Relaxed),
        recs.len()
    );
    let rejects = stats.rejects.lock().expect("rejects lock");
    let total_rejects: u64 = rejects.values().sum();
    let by_reason: Vec<String> = rejects.iter().map(|(r, n)| format!("{r}={n}")).collect();
    println!(
        "rejected to dead letters   {total_rejects} ({})",
        by_reason.join(", ")
    );

    // Sample users: those with the most events, so their history says something.
    let mut per_user: HashMap<&str, Vec<&ReplayEvent>> = HashMap::new();
    for e in events {
        per_user.entry(&e.user_id).or_default().push(e);
    }
    let last_rec: HashMap<&str, &Recommendation> =
        recs.iter().map(|r| (r.user_id.as_str(), r)).collect();
    let mut users: Vec<&str> = per_user
        .keys()
        .copied()
        .filter(|u| last_rec.contains_key(u))
        .collect();
    users.sort_by_key(|u| {
        (
            std::cmp::Reverse(per_user[u].len()),
            u.parse::<u64>().unwrap_or(0),
        )
    });
    let title = |id: &str| {
        titles
            .get(id)
            .cloned()
            .unwrap_or_else(|| format!("item {id}"))
    };
    for user in users.into_iter().step_by(97).take(args.samples) {
        let history = &per_user[user];
        let rec = last_rec[user];
        println!();
        println!("user {user}: {} events; the last five:", history.len());
        for e in history.iter().rev().take(5).rev() {
            println!(
                "    {:<8} {}",
                if e.purchase { "purchase" } else { "click" },
                title(&e.item_id)
            );
        }
        println!(
            "  recommended by {} v{}:",
            rec.model.name, rec.model.version
        );
        for item in &rec.items {
            println!("    {:>7.3}  {}", item.score, title(&item.item_id));
        }
    }
}
