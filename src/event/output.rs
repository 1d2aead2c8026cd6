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
    /// The original payload, base64 (empty when the message had none).
    pub payload_base64: String,
    pub payload_bytes: usize,
    pub kafka_timestamp_ms: Option<i64>,
    pub rejected_at_ms: i64,
}

impl DeadLetter {
    pub fn new(msg: &InMessage, rejection: Rejection, now_ms: i64) -> DeadLetter {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let payload = msg.payload.as_deref().unwrap_or_default();
        DeadLetter {
            reason: rejection.reason,
            detail: rejection.detail,
            source: msg.source(),
            key_base64: msg.key.as_deref().map(|k| b64.encode(k)),
            payload_base64: b64.encode(payload),
            payload_bytes: payload.len(),
            kafka_timestamp_ms: msg.kafka_timestamp_ms,
            rejected_at_ms: now_ms,
        }
    }
}
