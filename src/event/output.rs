//! The documents the daemon produces: a recommendation after each user event, and a dead letter for
//! each rejected message (with the original bytes, so it can be replayed).

use serde::{Deserialize, Serialize};

use super::{EventType, InMessage, RejectReason, Rejection, SourceRef};

/// One recommended item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoredItem {
    pub item_id: String,
    pub score: f32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRef {
    pub name: String,
    pub version: String,
}

/// Output: top-K items for a user, right after one of their events. Keyed by user id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recommendation {
    pub user_id: String,
    pub items: Vec<ScoredItem>,
    pub model: ModelRef,
    pub source: SourceRef,
    pub event_type: EventType,
    /// The event's own time.
    pub event_timestamp_ms: i64,
    /// When the event reached Kafka (the message timestamp); latency is measured from here.
    pub ingest_timestamp_ms: i64,
    /// When the daemon handed the recommendation to the producer.
    pub emitted_at_ms: i64,
}

/// Output: a rejected message, with the original bytes and enough to find and replay it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub reason: RejectReason,
    pub detail: String,
    pub source: SourceRef,
    /// The original key, base64; null when the message had none.
    pub key_base64: Option<String>,
    /// Whether `key_base64` holds only the key's first bytes (see [`kept`]).
    pub key_truncated: bool,
    /// The original payload, base64 (empty when the message had none).
    pub payload_base64: String,
    /// Whether `payload_base64` holds only the payload's first bytes (see [`kept`]).
    pub payload_truncated: bool,
    /// The original payload's length, cut or not.
    pub payload_bytes: usize,
    pub kafka_timestamp_ms: Option<i64>,
    pub rejected_at_ms: i64,
}

/// What a dead letter keeps of an original key or payload: its first `keep` bytes
/// (`limits.max_message_bytes`). Base64 makes the bytes a third longer, so a message close to the
/// broker's size limit would make a dead letter the broker refuses, retried forever: a stalled
/// partition. `source` still points at the whole message.
pub fn kept(bytes: &[u8], keep: usize) -> &[u8] {
    &bytes[..bytes.len().min(keep)]
}

impl DeadLetter {
    /// `keep`: the most bytes of the key and of the payload to copy (see [`kept`]).
    pub fn new(msg: &InMessage, rejection: Rejection, now_ms: i64, keep: usize) -> DeadLetter {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let payload = msg.payload.as_deref().unwrap_or_default();
        let key = msg.key.as_deref();
        DeadLetter {
            reason: rejection.reason,
            detail: rejection.detail,
            source: msg.source(),
            key_base64: key.map(|k| b64.encode(kept(k, keep))),
            key_truncated: key.is_some_and(|k| k.len() > keep),
            payload_base64: b64.encode(kept(payload, keep)),
            payload_truncated: payload.len() > keep,
            payload_bytes: payload.len(),
            kafka_timestamp_ms: msg.kafka_timestamp_ms,
            rejected_at_ms: now_ms,
        }
    }
}
