//! Store footprint and write throughput: sled bytes per user after N users (default 100,000), each
//! with a full 50-item window of MovieLens-100k item ids drawn with MovieLens's own popularity, written
//! in micro-batches of 256 users through the daemon's own commit path (atomic batch + flush).
//!
//! `--state-floats N` adds a step model's state of N float32 per user (SASRec-ml100k: 6,168;
//! the memory model: 1,159; GRU4Rec d=64: 64).
//!
//! It also prints the peak resident memory, to compare with the configured 64 MiB cache.
//! `--rewrite` then reads, changes and writes back as many randomly chosen users (the daemon's
//! pattern; the write rate printed is still the first pass's).
//!
//!     cargo bench --bench store -- [users] [--state-floats N] [--rewrite]

use std::time::Instant;

use longmem::event::{EventType, UserEvent};
use longmem::memory::{ModelState, Store, StoreBatch, UserMemory};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rewrite = args.iter().any(|a| a == "--rewrite");
    let state_floats: usize = args
        .iter()
        .position(|a| a == "--state-floats")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(0);
    let users: usize = args
        .iter()
        .enumerate()
        .filter(|(i, _)| *i == 0 || args[i - 1] != "--state-floats")
        .filter(|(_, a)| *a != "--rewrite")
        .find_map(|(_, a)| a.parse().ok())
        .unwrap_or(100_000);
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data/seqrec/recbole_ml100k");
    let items: Vec<String> = longmem::tools::datasets::movielens_events(&data)
        .expect("MovieLens-100k from ../shared/data")
        .into_iter()
        .map(|e| e.item_id)
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 64 << 20).unwrap();
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let started = Instant::now();
    let mut batch = StoreBatch::default();
    for u in 0..users {
        let mut memory = UserMemory::default();
        for i in 0..50 {
            let event_type = if i % 4 == 0 {
                EventType::Purchase
            } else {
                EventType::Click
            };
            let item = &items[(next() % items.len() as u64) as usize];
            let event = UserEvent::new(
                event_type,
                &format!("user-{u}"),
                item,
                1_700_000_000_000 + i,
            );
            memory.apply(&event, 50);
        }
        if state_floats > 0 {
            memory.model_state = Some(ModelState {
                owner: "bench@1".into(),
                tensors: vec![(0..state_floats)
                    .map(|_| (next() % 1000) as f32 / 1000.0)
                    .collect()]
                .into(),
            });
        }
        batch.put_user(format!("user-{u}"), memory);
        batch.advance("events", (u % 8) as i32, u as i64 + 1);
        if (u + 1) % 256 == 0 {
            store.commit(&std::mem::take(&mut batch)).unwrap();
        }
    }
    store.commit(&batch).unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    if rewrite {
        // Then as the daemon does: read a random user's record, change it, write it back.
        for round in 0..users {
            let u = (next() % users as u64) as usize;
            let key = format!("user-{u}");
            let mut m = store.user(&key).unwrap().unwrap_or_default();
            m.clicks += 1;
            batch.put_user(key, m);
            if (round + 1) % 256 == 0 {
                store.commit(&std::mem::take(&mut batch)).unwrap();
            }
        }
        store.commit(&batch).unwrap();
    }
    // Resident memory at its peak: the store's cache is 64 MiB, so much more is sled's own overhead.
    let peak_rss = longmem::tools::bench::process_status_bytes("VmHWM");
    let encoded = postcard::to_allocvec(&store.user("user-0").unwrap().unwrap())
        .unwrap()
        .len();
    drop(store);
    // Reopen so the size reflects what a restarted daemon finds on disk.
    let store = Store::open(dir.path(), 64 << 20).unwrap();
    let bytes = store.size_on_disk();
    println!("users                      {users} (model state: {state_floats} floats each)");
    println!(
        "encoded state per user     {encoded} bytes (50-item window, counts, last event time)"
    );
    println!(
        "sled size on disk          {bytes} bytes = {:.0} bytes per user",
        bytes as f64 / users as f64
    );
    println!(
        "write rate                 {:.0} users/s in batches of 256 (atomic batch + flush)",
        users as f64 / elapsed
    );
    println!(
        "peak RSS                   {:.0} MiB (sled cache_capacity 64 MiB)",
        peak_rss as f64 / (1 << 20) as f64
    );
}
