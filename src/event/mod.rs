//! Events in and out of the daemon: the input types, [`decode`] (the rules that decide whether a
//! Kafka message is a valid event), and the output documents.
//!
//! - `mod.rs`: what a Kafka message is to the pipeline, and the events it may carry.
//! - `decode.rs`: bytes → [`Event`] or a typed [`Rejection`]. The rules here and the JSON Schemas in
//!   `schemas/` describe the same documents; `tests/schemas.rs` checks that they agree. Decoding
//!   never fails the pipeline: a message that breaks a rule becomes a [`Rejection`] with a typed
//!   [`RejectReason`], which the pipeline sends to the dead-letter topic.
//! - `output.rs`: recommendations and dead letters as they are produced.

mod decode;
mod output;

use serde::{Deserialize, Serialize};

pub use decode::{decode, expected_key, is_forbidden_in_id, RejectReason, Rejection};
pub use output::{kept, DeadLetter, ModelRef, Recommendation, ScoredItem};

/// One Kafka message as the pipeline sees it, detached from the consumer's buffers.
#[derive(Debug, Clone)]
pub struct InMessage {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    /// The Kafka message timestamp (producer create time or broker append time), epoch ms.
    pub kafka_timestamp_ms: Option<i64>,
    /// When the daemon took it from the consumer, epoch ms: the end-to-end latency splits there
    /// into the wait before the daemon (broker, fetch, backlog) and the daemon's own time.
    pub polled_at_ms: i64,
}

/// Where an event came from; carried by every output so consumers can drop repeats.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SourceRef {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

impl InMessage {
    pub fn source(&self) -> SourceRef {
        SourceRef {
            topic: self.topic.clone(),
            partition: self.partition,
            offset: self.offset,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    Click,
    Purchase,
    Inventory,
    Shipment,
    SupplierDelay,
    /// A purchase forwarded by longmem itself to its SKU × location's partition (see `supply`).
    Demand,
}

impl EventType {
    pub const ALL: [EventType; 6] = [
        EventType::Click,
        EventType::Purchase,
        EventType::Inventory,
        EventType::Shipment,
        EventType::SupplierDelay,
        EventType::Demand,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Click => "click",
            EventType::Purchase => "purchase",
            EventType::Inventory => "inventory",
            EventType::Shipment => "shipment",
            EventType::SupplierDelay => "supplier_delay",
            EventType::Demand => "demand",
        }
    }

    fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// A user's interaction with an item: what the recommenders learn from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserEvent {
    pub event_type: EventType,
    pub user_id: String,
    pub item_id: String,
    pub timestamp_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantity: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub price: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
}

impl UserEvent {
    /// An event with only the required fields.
    pub fn new(
        event_type: EventType,
        user_id: &str,
        item_id: &str,
        timestamp_ms: i64,
    ) -> UserEvent {
        UserEvent {
            event_type,
            user_id: user_id.to_string(),
            item_id: item_id.to_string(),
            timestamp_ms,
            quantity: None,
            price: None,
            location: None,
            session_id: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Inbound,
    Outbound,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShipmentStatus {
    Created,
    InTransit,
    Delivered,
    Cancelled,
}

/// Supply-chain events, keyed by `sku@location`: they update that SKU × location's memory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event_type", rename_all = "snake_case")]
pub enum SupplyEvent {
    Inventory {
        sku: String,
        location: String,
        on_hand: i64,
        timestamp_ms: i64,
    },
    Shipment {
        shipment_id: String,
        sku: String,
        location: String,
        quantity: i64,
        direction: Direction,
        status: ShipmentStatus,
        expected_arrival_ms: i64,
        timestamp_ms: i64,
    },
    SupplierDelay {
        supplier: String,
        sku: String,
        location: String,
        delay_hours: f64,
        new_expected_arrival_ms: i64,
        timestamp_ms: i64,
    },
    /// Units bought at a location: written by longmem from a purchase that names a location (the
    /// purchase arrives keyed by user), read back on the SKU × location's partition. `source` is the
    /// purchase, so a demand record written twice (a retried batch) is counted once.
    Demand {
        sku: String,
        location: String,
        quantity: i64,
        timestamp_ms: i64,
        source: SourceRef,
    },
}

impl SupplyEvent {
    /// The SKU × location whose memory the event changes.
    pub fn position(&self) -> (&str, &str) {
        match self {
            SupplyEvent::Inventory { sku, location, .. }
            | SupplyEvent::Shipment { sku, location, .. }
            | SupplyEvent::SupplierDelay { sku, location, .. }
            | SupplyEvent::Demand { sku, location, .. } => (sku, location),
        }
    }
}

/// Serialises as the document it was decoded from (the tools write their streams with it).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Event {
    User(UserEvent),
    Supply(SupplyEvent),
}

impl Event {
    pub fn event_type(&self) -> EventType {
        match self {
            Event::User(e) => e.event_type,
            Event::Supply(SupplyEvent::Inventory { .. }) => EventType::Inventory,
            Event::Supply(SupplyEvent::Shipment { .. }) => EventType::Shipment,
            Event::Supply(SupplyEvent::SupplierDelay { .. }) => EventType::SupplierDelay,
            Event::Supply(SupplyEvent::Demand { .. }) => EventType::Demand,
        }
    }
}
