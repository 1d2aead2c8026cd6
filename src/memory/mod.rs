//! The long-term memory: per-user state in sled, and each input partition's next offset beside it.
//!
//! Guarantee: a micro-batch's state changes and the offsets that produced them are written in one
//! atomic sled batch and flushed together ([`Store::commit`]). After a crash the store holds either
//! all of a batch or none of it, and the consumer resumes from the stored offset, so every event is
//! applied to the state exactly once.
//!
//! Layout, one sled tree so a single batch is atomic:
//! - `u/<user id>`                → [`UserMemory`] (postcard)
//! - `s/<sku>\0<location>`         → [`SkuMemory`] (postcard): the supply-chain memory
//! - `o/<topic>\0<partition be>`  → next offset to read (u64, big endian)
//! - `c/<changelog>\0<partition be>` → next changelog offset this store has not applied (u64 BE)
//!
//! The changelog topic ([`crate::changelog`]) carries the same keys and encoded records, so a partition
//! that moves is restored record for record.
//!
//! A record holds what cannot be recomputed: the recent-item window, counts, timestamps, and model
//! state that is not a function of the window (a GRU's hidden vector, the memory model's slots). A
//! Transformer's key/value cache is such a function, so it lives in a [`StateCache`] in RAM instead.

mod state_cache;

use std::collections::HashMap;
use std::path::Path;

use compact_str::CompactString;
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
use serde::{Deserialize, Serialize};

use crate::config::StatePrecision;
use crate::event::{EventType, UserEvent};
use crate::supply::SkuMemory;

pub use state_cache::StateCache;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "cannot open the store at {path}: {error}. If another longmem process uses this directory, stop it \
         first (the store is locked by its owner); otherwise check that the path is writable"
    )]
    Open { path: String, error: sled::Error },
    #[error("store I/O failed: {0}. Check disk space and the store directory's health")]
    Io(sled::Error),
    #[error("stored state for `{key}` cannot be decoded ({error}); the store was written by an incompatible version")]
    Corrupt { key: String, error: postcard::Error },
    #[error(
        "the stored offset of {topic} partition {partition} is {len} bytes, not 8: the store is \
         damaged. Move the directory away to resume from the group's committed offsets with an empty \
         memory (docs/operations.md, \"Upgrade longmem\")"
    )]
    CorruptOffset {
        topic: String,
        partition: i32,
        len: usize,
    },
    #[error(
        "the store at {path} holds format {found}, this build reads format {expected}: it was written \
         by another longmem version. Run that version, or move the directory away to start with an \
         empty memory from the group's committed offsets (docs/operations.md, \"Upgrade longmem\")"
    )]
    Format {
        path: String,
        found: String,
        expected: u32,
    },
    #[error("no store at {path} (store.path); start the daemon with this config first")]
    Missing { path: String },
}

// The cause is part of each message, so it is not also chained as `source()`: `{:#}` would print it
// twice.
impl From<sled::Error> for StoreError {
    fn from(error: sled::Error) -> Self {
        StoreError::Io(error)
    }
}

/// The encoding of the stored records. Bump it whenever a stored struct changes shape (postcard has
/// no schema evolution): a store of another format is refused at start, not misread record by
/// record mid-stream.
pub const STORE_FORMAT: u32 = 2;
const FORMAT_KEY: &[u8] = b"m/format";

/// What longmem remembers about one user. Small and bounded: the recent-item window has a fixed
/// maximum length, so the state per user does not grow with their history.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UserMemory {
    /// External ids of the most recent items, oldest first, at most `store.history_len`. Ids of
    /// up to 24 bytes are held inline, without an allocation each: a batch reads, copies and drops
    /// 50 of them per user. Stored exactly as a `String` would be.
    pub recent_items: Vec<CompactString>,
    pub clicks: u64,
    pub purchases: u64,
    pub last_event_ms: i64,
    /// The step graph's state after the user's last event, for models whose state is not a
    /// function of the window (recurrent state, memory slots); `None` for the others, whose state
    /// is in the [`StateCache`].
    pub model_state: Option<ModelState>,
}

/// A model's incremental state for one user, and which model wrote it (`name@version`): a state
/// written by another model is never fed to this one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelState {
    pub owner: String,
    /// One flat tensor per state input of the step graph, without the batch axis.
    pub tensors: StateTensors,
}

/// State tensors as stored: 32-bit floats, or 16-bit halves of them (`store.state_precision`).
/// A Transformer's key/value cache is most of a user's record, so halving it halves what sled
/// reads, writes and caches per event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum StateTensors {
    F32(Vec<Vec<f32>>),
    /// IEEE 754 half-precision bit patterns.
    F16(Vec<Vec<u16>>),
}

impl Default for StateTensors {
    fn default() -> Self {
        StateTensors::F32(Vec::new())
    }
}

impl From<Vec<Vec<f32>>> for StateTensors {
    fn from(tensors: Vec<Vec<f32>>) -> Self {
        StateTensors::F32(tensors)
    }
}

impl StateTensors {
    pub fn encode(tensors: Vec<Vec<f32>>, precision: StatePrecision) -> StateTensors {
        match precision {
            StatePrecision::F32 => StateTensors::F32(tensors),
            // Whole slices at a time: eight lanes per F16C instruction where the CPU has it,
            // against one call per float (about a sixth of the pipeline thread on sasrec step).
            StatePrecision::F16 => StateTensors::F16(
                tensors
                    .iter()
                    .map(|t| {
                        let mut bits = vec![0u16; t.len()];
                        bits.reinterpret_cast_mut::<half::f16>()
                            .convert_from_f32_slice(t);
                        bits
                    })
                    .collect(),
            ),
        }
    }

    /// The tensors as the model takes them.
    pub fn to_f32(&self) -> Vec<Vec<f32>> {
        match self {
            StateTensors::F32(t) => t.clone(),
            StateTensors::F16(t) => t
                .iter()
                .map(|t| t.reinterpret_cast::<half::f16>().to_f32_vec())
                .collect(),
        }
    }

    /// Zeros of these lengths at `precision`: the state of a user the model has seen nothing of.
    pub fn zeros(lengths: impl IntoIterator<Item = usize>, precision: StatePrecision) -> Self {
        let lengths = lengths.into_iter();
        match precision {
            StatePrecision::F32 => StateTensors::F32(lengths.map(|n| vec![0.0; n]).collect()),
            // +0.0 in half precision is the all-zero bit pattern.
            StatePrecision::F16 => StateTensors::F16(lengths.map(|n| vec![0; n]).collect()),
        }
    }

    pub fn precision(&self) -> StatePrecision {
        match self {
            StateTensors::F32(_) => StatePrecision::F32,
            StateTensors::F16(_) => StatePrecision::F16,
        }
    }

    /// The same values at `precision` (unchanged when already there).
    pub fn at_precision(self, precision: StatePrecision) -> Self {
        match (self.precision(), precision) {
            (now, wanted) if now == wanted => self,
            _ => StateTensors::encode(self.to_f32(), precision),
        }
    }

    /// Whether tensor `n` has `len` values for each `(n, len)`, and there are no others.
    pub fn has_lengths(&self, lengths: &[usize]) -> bool {
        match self {
            StateTensors::F32(t) => t.iter().map(Vec::len).eq(lengths.iter().copied()),
            StateTensors::F16(t) => t.iter().map(Vec::len).eq(lengths.iter().copied()),
        }
    }

    /// Writes tensor `n`'s values `from..from + out.len()` into `out` as the model takes them (f32):
    /// a batch tensor is filled straight from what is held, without a per-user copy between.
    pub fn read_f32(&self, n: usize, from: usize, out: &mut [f32]) {
        let range = from..from + out.len();
        match self {
            StateTensors::F32(t) => out.copy_from_slice(&t[n][range]),
            StateTensors::F16(t) => t[n][range]
                .reinterpret_cast::<half::f16>()
                .convert_to_f32_slice(out),
        }
    }

    /// Overwrites tensor `n`'s values from `at` with `values`, at this state's precision: a
    /// batch's new state goes straight back where the old one was held.
    pub fn write_f32(&mut self, n: usize, at: usize, values: &[f32]) {
        let range = at..at + values.len();
        match self {
            StateTensors::F32(t) => t[n][range].copy_from_slice(values),
            StateTensors::F16(t) => t[n][range]
                .reinterpret_cast_mut::<half::f16>()
                .convert_from_f32_slice(values),
        }
    }

    /// Within tensor `n`'s `run`, drops the first `values.len()` values, moves the rest to the
    /// front and writes `values` after them: a sliding cache takes its newest entry.
    pub fn shift_in_f32(&mut self, n: usize, run: std::ops::Range<usize>, values: &[f32]) {
        let keep = run.start + values.len()..run.end;
        let tail = run.end - values.len();
        match self {
            StateTensors::F32(t) => {
                t[n].copy_within(keep, run.start);
                t[n][tail..run.end].copy_from_slice(values);
            }
            StateTensors::F16(t) => {
                t[n].copy_within(keep, run.start);
                t[n][tail..run.end]
                    .reinterpret_cast_mut::<half::f16>()
                    .convert_from_f32_slice(values);
            }
        }
    }

    /// How many tensors.
    pub fn len(&self) -> usize {
        match self {
            StateTensors::F32(t) => t.len(),
            StateTensors::F16(t) => t.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of tensor data.
    pub fn bytes(&self) -> usize {
        match self {
            StateTensors::F32(t) => t.iter().map(Vec::len).sum::<usize>() * 4,
            StateTensors::F16(t) => t.iter().map(Vec::len).sum::<usize>() * 2,
        }
    }
}

impl UserMemory {
    pub fn events(&self) -> u64 {
        self.clicks + self.purchases
    }

    /// The remembered item ids, oldest first, as the model encodes a window.
    pub fn recent_ids(&self) -> impl DoubleEndedIterator<Item = &str> {
        self.recent_items.iter().map(CompactString::as_str)
    }

    /// Applies one event: the item joins the window (dropping the oldest beyond `history_len`).
    pub fn apply(&mut self, event: &UserEvent, history_len: usize) {
        match event.event_type {
            EventType::Purchase => self.purchases += 1,
            _ => self.clicks += 1,
        }
        self.last_event_ms = self.last_event_ms.max(event.timestamp_ms);
        self.recent_items
            .push(CompactString::from(event.item_id.as_str()));
        if self.recent_items.len() > history_len {
            let excess = self.recent_items.len() - history_len;
            self.recent_items.drain(..excess);
        }
    }
}

fn user_key(user_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + user_id.len());
    k.extend_from_slice(b"u/");
    k.extend_from_slice(user_id.as_bytes());
    k
}

fn sku_key(sku: &str, location: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(3 + sku.len() + location.len());
    k.extend_from_slice(b"s/");
    k.extend_from_slice(sku.as_bytes());
    k.push(0);
    k.extend_from_slice(location.as_bytes());
    k
}

/// A changed record as written: (store key, encoded record, whose it is).
pub type EncodedRecord<'a> = (Vec<u8>, Vec<u8>, RecordOwner<'a>);

/// Whose record a changelog entry is.
pub enum RecordOwner<'a> {
    User(&'a str),
    Sku(&'a str, &'a str),
}

/// A record's store key, as the changelog carries it: `u/…` or `s/…`; `o/…` is an offset marker.
pub enum RecordKey<'a> {
    User,
    Sku,
    /// The next input offset of (topic, partition).
    Offset(&'a str, i32),
}

impl RecordKey<'_> {
    pub fn parse(key: &[u8]) -> Option<RecordKey<'_>> {
        match key.get(..2)? {
            b"u/" => Some(RecordKey::User),
            b"s/" => Some(RecordKey::Sku),
            b"o/" => {
                let rest = &key[2..];
                let split = rest.len().checked_sub(5)?;
                if rest[split] != 0 {
                    return None;
                }
                let topic = std::str::from_utf8(&rest[..split]).ok()?;
                let partition = i32::from_be_bytes(rest[split + 1..].try_into().ok()?);
                Some(RecordKey::Offset(topic, partition))
            }
            _ => None,
        }
    }
}

/// Refuses a restored record that would not decode when read.
fn check_record(key: &[u8], value: &[u8]) -> Result<(), StoreError> {
    let name = || String::from_utf8_lossy(key).into_owned();
    match RecordKey::parse(key) {
        Some(RecordKey::User) => postcard::from_bytes::<UserMemory>(value)
            .map(|_| ())
            .map_err(|error| StoreError::Corrupt { key: name(), error }),
        Some(RecordKey::Sku) => postcard::from_bytes::<SkuMemory>(value)
            .map(|_| ())
            .map_err(|error| StoreError::Corrupt { key: name(), error }),
        _ => Err(StoreError::Corrupt {
            key: name(),
            error: postcard::Error::DeserializeBadEncoding,
        }),
    }
}

fn changelog_key(topic: &str, partition: i32) -> Vec<u8> {
    partition_key(b"c/", topic, partition)
}

/// The stored offset's key; the changelog's offset markers carry the same key.
pub fn offset_key(topic: &str, partition: i32) -> Vec<u8> {
    partition_key(b"o/", topic, partition)
}

/// A position (the next offset to read) as the store keeps it and an offset marker carries it:
/// eight bytes, big endian.
pub fn position_bytes(next: i64) -> [u8; 8] {
    (next as u64).to_be_bytes()
}

/// The position in [`position_bytes`]' encoding; `None` when it is not eight bytes.
pub fn read_position(bytes: &[u8]) -> Option<i64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?) as i64)
}

/// `<prefix><topic>\0<partition, big endian>`.
fn partition_key(prefix: &[u8], topic: &str, partition: i32) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + topic.len() + 5);
    k.extend_from_slice(prefix);
    k.extend_from_slice(topic.as_bytes());
    k.push(0);
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

/// Where a batch reads the memories it changes.
pub trait Memories {
    fn user(&self, user_id: &str) -> Result<Option<UserMemory>, StoreError>;
    fn sku(&self, sku: &str, location: &str) -> Result<Option<SkuMemory>, StoreError>;
}

impl Memories for Store {
    fn user(&self, user_id: &str) -> Result<Option<UserMemory>, StoreError> {
        Store::user(self, user_id)
    }

    fn sku(&self, sku: &str, location: &str) -> Result<Option<SkuMemory>, StoreError> {
        Store::sku(self, sku, location)
    }
}

/// The memories of batches computed but not yet in the store (their outputs are still being
/// acknowledged), by the batch's sequence number: the next batch must see them.
#[derive(Default)]
pub struct Pending {
    users: HashMap<String, (u64, UserMemory)>,
    skus: HashMap<(String, String), (u64, SkuMemory)>,
}

impl Pending {
    pub fn remember(&mut self, seq: u64, batch: &StoreBatch) {
        for (user, memory) in &batch.users {
            self.users.insert(user.clone(), (seq, memory.clone()));
        }
        for (key, memory) in &batch.skus {
            self.skus.insert(key.clone(), (seq, memory.clone()));
        }
    }

    /// Drops what batch `seq` wrote to the store, unless a later batch changed it again.
    pub fn forget(&mut self, seq: u64, batch: &StoreBatch) {
        for user in batch.users.keys() {
            if self.users.get(user).is_some_and(|(s, _)| *s == seq) {
                self.users.remove(user);
            }
        }
        for key in batch.skus.keys() {
            if self.skus.get(key).is_some_and(|(s, _)| *s == seq) {
                self.skus.remove(key);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && self.skus.is_empty()
    }
}

/// The store as the next batch sees it: pending memories first.
pub struct PendingView<'a> {
    pub store: &'a Store,
    pub pending: &'a std::sync::Mutex<Pending>,
}

impl Memories for PendingView<'_> {
    fn user(&self, user_id: &str) -> Result<Option<UserMemory>, StoreError> {
        let pending = self.pending.lock().expect("pending lock");
        match pending.users.get(user_id) {
            Some((_, memory)) => Ok(Some(memory.clone())),
            None => self.store.user(user_id),
        }
    }

    fn sku(&self, sku: &str, location: &str) -> Result<Option<SkuMemory>, StoreError> {
        let pending = self.pending.lock().expect("pending lock");
        match pending.skus.get(&(sku.to_string(), location.to_string())) {
            Some((_, memory)) => Ok(Some(memory.clone())),
            None => self.store.sku(sku, location),
        }
    }
}

/// The changes of one micro-batch, applied atomically by [`Store::commit`].
#[derive(Default)]
pub struct StoreBatch {
    users: HashMap<String, UserMemory>,
    skus: HashMap<(String, String), SkuMemory>,
    next_offsets: HashMap<(String, i32), i64>,
    /// (changelog topic, partition) → the next changelog offset after this batch's records.
    changelog_next: HashMap<(String, i32), i64>,
}

impl StoreBatch {
    pub fn put_user(&mut self, user_id: String, memory: UserMemory) {
        self.users.insert(user_id, memory);
    }

    pub fn put_sku(&mut self, sku: String, location: String, memory: SkuMemory) {
        self.skus.insert((sku, location), memory);
    }

    /// Records that everything before `next_offset` on this partition is reflected in the batch.
    pub fn advance(&mut self, topic: &str, partition: i32, next_offset: i64) {
        let entry = self
            .next_offsets
            .entry((topic.to_string(), partition))
            .or_insert(next_offset);
        *entry = (*entry).max(next_offset);
    }

    /// Records that the changelog partition holds this batch's records up to `next_offset`.
    pub fn changelog_reached(&mut self, topic: &str, partition: i32, next_offset: i64) {
        let entry = self
            .changelog_next
            .entry((topic.to_string(), partition))
            .or_insert(next_offset);
        *entry = (*entry).max(next_offset);
    }

    /// Each changed record as the store writes it: (store key, encoded record, whose it is).
    pub fn encoded_records(&self) -> Result<Vec<EncodedRecord<'_>>, StoreError> {
        let mut out = Vec::with_capacity(self.users.len() + self.skus.len());
        for (user, memory) in &self.users {
            let bytes = encode(memory, || format!("user {user}"))?;
            out.push((user_key(user), bytes, RecordOwner::User(user)));
        }
        for ((sku, location), memory) in &self.skus {
            let bytes = encode(memory, || format!("sku {sku} at {location}"))?;
            out.push((
                sku_key(sku, location),
                bytes,
                RecordOwner::Sku(sku, location),
            ));
        }
        Ok(out)
    }

    pub fn next_offsets(&self) -> impl Iterator<Item = (&str, i32, i64)> {
        self.next_offsets
            .iter()
            .map(|((t, p), o)| (t.as_str(), *p, *o))
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && self.skus.is_empty() && self.next_offsets.is_empty()
    }
}

fn encode<T: Serialize>(memory: &T, name: impl FnOnce() -> String) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(memory).map_err(|error| StoreError::Corrupt { key: name(), error })
}

/// Stamps an empty store with [`STORE_FORMAT`]; refuses one stamped with another format, or one
/// with records but no stamp (written before formats were stamped).
fn check_format(tree: &sled::Tree, path: &Path) -> Result<(), StoreError> {
    let found = match tree.get(FORMAT_KEY)? {
        Some(v) if v.as_ref() == STORE_FORMAT.to_be_bytes() => return Ok(()),
        Some(v) => match <[u8; 4]>::try_from(v.as_ref()) {
            Ok(b) => u32::from_be_bytes(b).to_string(),
            Err(_) => format!("{v:?} (unreadable)"),
        },
        None if tree.is_empty() => {
            tree.insert(FORMAT_KEY, &STORE_FORMAT.to_be_bytes())?;
            tree.flush()?;
            return Ok(());
        }
        None => "none (written before store formats were stamped)".to_string(),
    };
    Err(StoreError::Format {
        path: path.display().to_string(),
        found,
        expected: STORE_FORMAT,
    })
}

#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    tree: sled::Tree,
    path: std::path::PathBuf,
}

impl Store {
    /// Opens (or creates) the store. The directory is locked by its owner; a lock still held by a
    /// process that is exiting (a restart, or sled's own flusher winding down) is waited for a few
    /// seconds before giving up.
    pub fn open(path: &Path, cache_bytes: u64) -> Result<Store, StoreError> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        let db = loop {
            let opened = sled::Config::new()
                .path(path)
                .cache_capacity(cache_bytes)
                .mode(sled::Mode::HighThroughput)
                .open();
            match opened {
                Ok(db) => break db,
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(error) => {
                    return Err(StoreError::Open {
                        path: path.display().to_string(),
                        error,
                    })
                }
            }
        };
        let tree = db.open_tree("longmem")?;
        check_format(&tree, path)?;
        Ok(Store {
            db,
            tree,
            path: path.to_path_buf(),
        })
    }

    /// Opens a store that exists, for reading it (`longmem inspect`): opening a sled path creates a
    /// store there, so look first and never create one.
    pub fn open_existing(path: &Path, cache_bytes: u64) -> Result<Store, StoreError> {
        if !path.join("db").exists() {
            return Err(StoreError::Missing {
                path: path.display().to_string(),
            });
        }
        Store::open(path, cache_bytes)
    }

    pub fn user(&self, user_id: &str) -> Result<Option<UserMemory>, StoreError> {
        self.get(user_key(user_id), || format!("user {user_id}"))
    }

    pub fn sku(&self, sku: &str, location: &str) -> Result<Option<SkuMemory>, StoreError> {
        self.get(sku_key(sku, location), || {
            format!("sku {sku} at {location}")
        })
    }

    /// Reads and decodes one record; `name` says which, in the error.
    fn get<T: serde::de::DeserializeOwned>(
        &self,
        key: Vec<u8>,
        name: impl FnOnce() -> String,
    ) -> Result<Option<T>, StoreError> {
        match self.tree.get(key)? {
            None => Ok(None),
            Some(bytes) => postcard::from_bytes(&bytes)
                .map(Some)
                .map_err(|error| StoreError::Corrupt { key: name(), error }),
        }
    }

    /// The next offset to consume on a partition, if this store has ever processed it.
    pub fn next_offset(&self, topic: &str, partition: i32) -> Result<Option<i64>, StoreError> {
        self.position(offset_key(topic, partition), topic, partition)
    }

    /// How far this store holds a changelog partition: the next changelog offset it has not applied.
    pub fn changelog_position(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<Option<i64>, StoreError> {
        self.position(changelog_key(topic, partition), topic, partition)
    }

    /// A stored position (u64, big endian) of `topic`'s `partition`.
    fn position(
        &self,
        key: Vec<u8>,
        topic: &str,
        partition: i32,
    ) -> Result<Option<i64>, StoreError> {
        let Some(v) = self.tree.get(key)? else {
            return Ok(None);
        };
        let next = read_position(&v).ok_or_else(|| StoreError::CorruptOffset {
            topic: topic.to_string(),
            partition,
            len: v.len(),
        })?;
        Ok(Some(next))
    }

    /// Applies restored changelog records (store key, encoded record), the input offsets they reach
    /// and the changelog position, in one atomic batch; a record that does not decode is refused
    /// before anything is written. Not flushed: a restore calls [`Store::flush`] once at its end
    /// (a crash before it loses a suffix of whole batches, position included, and the next
    /// restore reads that suffix again).
    pub fn apply_restored(
        &self,
        records: &[(Vec<u8>, Vec<u8>)],
        next_offsets: &[(String, i32, i64)],
        changelog: (&str, i32, i64),
    ) -> Result<(), StoreError> {
        let mut b = sled::Batch::default();
        for (key, value) in records {
            check_record(key, value)?;
            b.insert(key.as_slice(), value.as_slice());
        }
        for (topic, partition, next) in next_offsets {
            b.insert(offset_key(topic, *partition), &position_bytes(*next));
        }
        let (topic, partition, next) = changelog;
        b.insert(changelog_key(topic, partition), &position_bytes(next));
        self.tree.apply_batch(b)?;
        Ok(())
    }

    /// Moves a changelog partition's position from `from` to `to` only if the store is at `from`
    /// (compare and swap): the records between are offset markers of batches it holds. `false`
    /// when it was elsewhere (records came after it, or a restore moved it), and nothing changed.
    pub fn changelog_skip_markers(
        &self,
        topic: &str,
        partition: i32,
        from: i64,
        to: i64,
    ) -> Result<bool, StoreError> {
        let swapped = self.tree.compare_and_swap(
            changelog_key(topic, partition),
            Some(&position_bytes(from)[..]),
            Some(&position_bytes(to)[..]),
        )?;
        Ok(swapped.is_ok())
    }

    /// Makes everything applied so far durable (one fsync).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// Writes the batch's users and offsets atomically and flushes them to disk.
    pub fn commit(&self, batch: &StoreBatch) -> Result<(), StoreError> {
        let mut b = sled::Batch::default();
        for (user, memory) in &batch.users {
            b.insert(user_key(user), encode(memory, || format!("user {user}"))?);
        }
        for ((sku, location), memory) in &batch.skus {
            let bytes = encode(memory, || format!("sku {sku} at {location}"))?;
            b.insert(sku_key(sku, location), bytes);
        }
        for ((topic, partition), offset) in &batch.next_offsets {
            b.insert(offset_key(topic, *partition), &position_bytes(*offset));
        }
        for ((topic, partition), next) in &batch.changelog_next {
            b.insert(changelog_key(topic, *partition), &position_bytes(*next));
        }
        self.tree.apply_batch(b)?;
        self.db.flush()?;
        Ok(())
    }

    /// (size, available bytes) of the filesystem the store lives on, for the disk-space alert.
    #[allow(unsafe_code)]
    pub fn volume(&self) -> Option<(u64, u64)> {
        let path = std::ffi::CString::new(self.path.as_os_str().as_encoded_bytes()).ok()?;
        // SAFETY: statvfs is plain data; all zeroes is a valid value.
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: statvfs only writes the struct it is given; `path` is NUL-terminated.
        if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
            return None;
        }
        let block = stat.f_frsize as u64;
        Some((stat.f_blocks as u64 * block, stat.f_bavail as u64 * block))
    }

    /// Bytes the store occupies on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    /// Number of SKU × locations with stored memory (a full scan of their key range).
    pub fn sku_count(&self) -> usize {
        self.tree.scan_prefix(b"s/").count()
    }

    /// Number of users with stored memory (a full scan of the user key range).
    pub fn user_count(&self) -> usize {
        self.tree.scan_prefix(b"u/").count()
    }

    /// Up to `n` remembered users (the first in key order) with their memories, for checking a
    /// model against real windows; records that do not decode are skipped.
    pub fn sample_users(&self, n: usize) -> Result<Vec<(String, UserMemory)>, StoreError> {
        let mut users = Vec::with_capacity(n);
        for entry in self.tree.scan_prefix(b"u/") {
            if users.len() >= n {
                break;
            }
            let (key, value) = entry?;
            let Ok(memory) = postcard::from_bytes::<UserMemory>(&value) else {
                continue;
            };
            users.push((String::from_utf8_lossy(&key[2..]).into_owned(), memory));
        }
        Ok(users)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn markers_are_skipped_only_from_where_the_store_stands() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store"), 1 << 20).unwrap();
        let mut batch = StoreBatch::default();
        batch.changelog_reached("log", 2, 5);
        store.commit(&batch).unwrap();
        // Records came after 3 (the store is at 5): the markers from 3 are not all that follows.
        assert!(!store.changelog_skip_markers("log", 2, 3, 7).unwrap());
        assert_eq!(store.changelog_position("log", 2).unwrap(), Some(5));
        assert!(store.changelog_skip_markers("log", 2, 5, 7).unwrap());
        assert_eq!(store.changelog_position("log", 2).unwrap(), Some(7));
        // A partition this store never held is left alone.
        assert!(!store.changelog_skip_markers("log", 1, 0, 2).unwrap());
        assert_eq!(store.changelog_position("log", 1).unwrap(), None);
    }

    #[test]
    fn a_damaged_offset_record_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store"), 1 << 20).unwrap();
        store
            .tree
            .insert(offset_key("events", 3), &[1u8, 2, 3][..])
            .unwrap();
        let err = store.next_offset("events", 3).unwrap_err();
        assert!(
            matches!(err, StoreError::CorruptOffset { len: 3, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("events partition 3"), "{err}");
        assert_eq!(store.next_offset("events", 4).unwrap(), None);
    }

    fn user_memories() -> impl Strategy<Value = UserMemory> {
        let tensors = prop_oneof![
            proptest::collection::vec(proptest::collection::vec(any::<f32>(), 0..8), 0..3)
                .prop_map(StateTensors::F32),
            proptest::collection::vec(proptest::collection::vec(any::<u16>(), 0..8), 0..3)
                .prop_map(StateTensors::F16),
        ];
        (
            // Ids short enough to be held inline and long enough not to be.
            proptest::collection::vec(".{0,40}", 0..6),
            any::<u64>(),
            any::<u64>(),
            any::<i64>(),
            proptest::option::of((".{0,8}", tensors)),
        )
            .prop_map(|(recent_items, clicks, purchases, last_event_ms, state)| {
                UserMemory {
                    recent_items: recent_items.into_iter().map(CompactString::from).collect(),
                    clicks,
                    purchases,
                    last_event_ms,
                    model_state: state.map(|(owner, tensors)| ModelState { owner, tensors }),
                }
            })
    }

    proptest! {
        /// What the store writes is what it reads back, for any record (NaN payloads included:
        /// compared as bytes).
        #[test]
        fn user_records_round_trip_through_the_encoding(memory in user_memories()) {
            let bytes = encode(&memory, || "u".to_string()).unwrap();
            let back: UserMemory = postcard::from_bytes(&bytes).unwrap();
            prop_assert_eq!(encode(&back, || "u".to_string()).unwrap(), bytes);
        }

        /// Records are the bytes they were when the window was a `Vec<String>`: stores and
        /// changelogs written before read back unchanged.
        #[test]
        fn user_records_keep_the_encoding_of_string_windows(memory in user_memories()) {
            #[derive(Serialize, Deserialize)]
            struct StringWindow {
                recent_items: Vec<String>,
                clicks: u64,
                purchases: u64,
                last_event_ms: i64,
                model_state: Option<ModelState>,
            }
            let before = StringWindow {
                recent_items: memory.recent_items.iter().map(|id| id.to_string()).collect(),
                clicks: memory.clicks,
                purchases: memory.purchases,
                last_event_ms: memory.last_event_ms,
                model_state: memory.model_state.clone(),
            };
            let old = postcard::to_allocvec(&before).unwrap();
            prop_assert_eq!(&postcard::to_allocvec(&memory).unwrap(), &old);
            let read: UserMemory = postcard::from_bytes(&old).unwrap();
            prop_assert_eq!(read, memory);
        }
    }

    #[test]
    fn a_store_of_another_format_is_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        // A new store is stamped with this build's format and opens again.
        let store = Store::open(&path, 1 << 20).unwrap();
        let mut batch = StoreBatch::default();
        batch.put_user("u".into(), UserMemory::default());
        store.commit(&batch).unwrap();
        drop(store);
        Store::open(&path, 1 << 20).unwrap();

        // Stamped with another format.
        let set_stamp = |stamp: Option<&[u8]>| {
            let db = sled::open(&path).unwrap();
            let tree = db.open_tree("longmem").unwrap();
            match stamp {
                Some(v) => tree.insert(FORMAT_KEY, v).unwrap(),
                None => tree.remove(FORMAT_KEY).unwrap(),
            };
            db.flush().unwrap();
        };
        set_stamp(Some(&(STORE_FORMAT + 1).to_be_bytes()));
        let message = Store::open(&path, 1 << 20).err().unwrap().to_string();
        assert!(
            message.contains(&format!("holds format {}", STORE_FORMAT + 1))
                && message.contains(&format!("reads format {STORE_FORMAT}")),
            "{message}"
        );
        // Records without a stamp: written before formats were stamped.
        set_stamp(None);
        let refused = Store::open(&path, 1 << 20).err().unwrap();
        assert!(matches!(refused, StoreError::Format { .. }), "{refused}");
        assert!(refused.to_string().contains("before store formats"));
    }

    #[test]
    fn pending_memories_are_read_before_the_store_until_their_batch_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let pending = std::sync::Mutex::new(Pending::default());
        let view = PendingView {
            store: &store,
            pending: &pending,
        };
        let with_clicks = |clicks| UserMemory {
            clicks,
            ..UserMemory::default()
        };
        let (mut first, mut second) = (StoreBatch::default(), StoreBatch::default());
        first.put_user("u".into(), with_clicks(1));
        second.put_user("u".into(), with_clicks(2));
        pending.lock().unwrap().remember(1, &first);
        assert_eq!(view.user("u").unwrap().unwrap().clicks, 1);
        pending.lock().unwrap().remember(2, &second);
        // Batch 1 is written: batch 2's newer memory stays pending...
        store.commit(&first).unwrap();
        pending.lock().unwrap().forget(1, &first);
        assert_eq!(view.user("u").unwrap().unwrap().clicks, 2);
        // ...until it is written too; then the store answers.
        store.commit(&second).unwrap();
        pending.lock().unwrap().forget(2, &second);
        assert!(pending.lock().unwrap().is_empty());
        assert_eq!(view.user("u").unwrap().unwrap().clicks, 2);
    }

    #[test]
    fn half_precision_state_halves_the_bytes_and_keeps_three_significant_digits() {
        let tensors = vec![vec![0.0, 1.0, -2.5, 0.123_456, 3_000.7], vec![1e-3; 4]];
        let half = StateTensors::encode(tensors.clone(), StatePrecision::F16);
        assert_eq!(half.len(), 2);
        assert_eq!(half.bytes(), 9 * 2);
        for (a, b) in tensors.iter().flatten().zip(half.to_f32().iter().flatten()) {
            assert!((a - b).abs() <= a.abs() / 1024.0, "{a} came back as {b}");
        }
        let exact = StateTensors::encode(tensors.clone(), StatePrecision::F32);
        assert_eq!((exact.bytes(), exact.to_f32()), (9 * 4, tensors));
    }

    proptest! {
        /// The whole-slice conversion writes the bits the one-float-at-a-time conversion of earlier
        /// builds wrote (round to nearest even, infinities, NaN, subnormals), at lengths that leave
        /// a remainder after the eight-lane blocks; stored records decode the same either way.
        #[test]
        fn half_precision_slices_round_like_single_floats(
            values in proptest::collection::vec(proptest::num::f32::ANY, 0..40)
        ) {
            let StateTensors::F16(bits) = StateTensors::encode(vec![values.clone()], StatePrecision::F16) else {
                panic!("asked for f16");
            };
            let single: Vec<u16> = values.iter().map(|&v| half::f16::from_f32(v).to_bits()).collect();
            prop_assert_eq!(&bits[0], &single);
            let back = StateTensors::F16(bits).to_f32();
            for (got, b) in back[0].iter().zip(&single) {
                let want = half::f16::from_bits(*b).to_f32();
                prop_assert!(got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()));
            }
        }
    }

    #[test]
    fn a_stored_state_decodes_whatever_precision_it_was_written_with() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let mut batch = StoreBatch::default();
        for (user, precision) in [("a", StatePrecision::F32), ("b", StatePrecision::F16)] {
            let memory = UserMemory {
                model_state: Some(ModelState {
                    owner: "m@1".into(),
                    tensors: StateTensors::encode(vec![vec![0.5; 8]], precision),
                }),
                ..UserMemory::default()
            };
            batch.put_user(user.into(), memory);
        }
        store.commit(&batch).unwrap();
        for user in ["a", "b"] {
            let state = store.user(user).unwrap().unwrap().model_state.unwrap();
            assert_eq!(state.tensors.to_f32(), vec![vec![0.5; 8]]);
        }
    }

    fn click(item: &str, ts: i64) -> UserEvent {
        UserEvent::new(EventType::Click, "u", item, ts)
    }

    #[test]
    fn window_is_bounded_and_ordered() {
        let mut m = UserMemory::default();
        for i in 0..10 {
            m.apply(&click(&i.to_string(), 100 + i), 4);
        }
        assert_eq!(m.recent_items, vec!["6", "7", "8", "9"]);
        assert_eq!(m.clicks, 10);
        assert_eq!(m.last_event_ms, 109);
        // An out-of-order (older) event does not move last_event_ms back.
        m.apply(&click("x", 5), 4);
        assert_eq!(m.last_event_ms, 109);
    }

    #[test]
    fn users_and_offsets_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), 1 << 20).unwrap();
            let mut batch = StoreBatch::default();
            let mut m = UserMemory::default();
            m.apply(&click("a", 1), 50);
            batch.put_user("alice".into(), m.clone());
            batch.advance("events", 3, 10);
            batch.advance("events", 3, 8);
            store.commit(&batch).unwrap();
            assert_eq!(store.user("alice").unwrap(), Some(m));
        }
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(store.user("alice").unwrap().unwrap().clicks, 1);
        assert_eq!(store.next_offset("events", 3).unwrap(), Some(10));
        assert_eq!(store.next_offset("events", 4).unwrap(), None);
        assert_eq!(store.user_count(), 1);
    }

    #[test]
    fn second_open_of_a_locked_store_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path(), 1 << 20).unwrap();
        let err = Store::open(dir.path(), 1 << 20)
            .err()
            .expect("locked")
            .to_string();
        assert!(err.contains("another longmem process"), "{err}");
    }
}
