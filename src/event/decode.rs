//! Bytes → [`Event`] or a typed [`Rejection`]: strict JSON (no duplicate keys, no byte-order mark),
//! the fields each event type needs, ids without control or format characters, plausible timestamps
//! and quantities, and a key that matches the event's entity.

use std::cell::RefCell;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use unicode_general_category::{get_general_category, GeneralCategory};

use super::*;
use crate::config::LimitsConfig;

/// Why a message was rejected. The set is closed so the per-reason counter has bounded labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    EmptyPayload,
    Oversize,
    InvalidUtf8,
    ByteOrderMark,
    MalformedJson,
    DuplicateField,
    NotAnObject,
    MissingKey,
    EmptyKey,
    KeyMismatch,
    UnknownEventType,
    MissingField,
    UnknownField,
    WrongType,
    InvalidValue,
    ForbiddenCharacter,
    OutOfRange,
    TimestampInFuture,
    TimestampTooOld,
}

impl RejectReason {
    pub const ALL: [RejectReason; 19] = [
        RejectReason::EmptyPayload,
        RejectReason::Oversize,
        RejectReason::InvalidUtf8,
        RejectReason::ByteOrderMark,
        RejectReason::MalformedJson,
        RejectReason::DuplicateField,
        RejectReason::NotAnObject,
        RejectReason::MissingKey,
        RejectReason::EmptyKey,
        RejectReason::KeyMismatch,
        RejectReason::UnknownEventType,
        RejectReason::MissingField,
        RejectReason::UnknownField,
        RejectReason::WrongType,
        RejectReason::InvalidValue,
        RejectReason::ForbiddenCharacter,
        RejectReason::OutOfRange,
        RejectReason::TimestampInFuture,
        RejectReason::TimestampTooOld,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::EmptyPayload => "empty_payload",
            RejectReason::Oversize => "oversize",
            RejectReason::InvalidUtf8 => "invalid_utf8",
            RejectReason::ByteOrderMark => "byte_order_mark",
            RejectReason::MalformedJson => "malformed_json",
            RejectReason::DuplicateField => "duplicate_field",
            RejectReason::NotAnObject => "not_an_object",
            RejectReason::MissingKey => "missing_key",
            RejectReason::EmptyKey => "empty_key",
            RejectReason::KeyMismatch => "key_mismatch",
            RejectReason::UnknownEventType => "unknown_event_type",
            RejectReason::MissingField => "missing_field",
            RejectReason::UnknownField => "unknown_field",
            RejectReason::WrongType => "wrong_type",
            RejectReason::InvalidValue => "invalid_value",
            RejectReason::ForbiddenCharacter => "forbidden_character",
            RejectReason::OutOfRange => "out_of_range",
            RejectReason::TimestampInFuture => "timestamp_in_future",
            RejectReason::TimestampTooOld => "timestamp_too_old",
        }
    }
}

/// A message that is not a valid event, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub reason: RejectReason,
    pub detail: String,
}

fn reject(reason: RejectReason, detail: impl Into<String>) -> Rejection {
    Rejection {
        reason,
        detail: detail.into(),
    }
}

/// Decodes and validates one message. `now_ms` is the daemon's clock, for the future-timestamp bound.
pub fn decode(msg: &InMessage, limits: &LimitsConfig, now_ms: i64) -> Result<Event, Rejection> {
    let payload = match msg.payload.as_deref() {
        None | Some([]) => {
            return Err(reject(RejectReason::EmptyPayload, "message has no payload"))
        }
        Some(p) => p,
    };
    if payload.len() > limits.max_message_bytes {
        return Err(reject(
            RejectReason::Oversize,
            format!(
                "payload is {} bytes; limits.max_message_bytes is {}",
                payload.len(),
                limits.max_message_bytes
            ),
        ));
    }
    let text = std::str::from_utf8(payload).map_err(|e| {
        reject(
            RejectReason::InvalidUtf8,
            format!("payload is not UTF-8: {e}"),
        )
    })?;
    // RFC 8259 forbids a byte-order mark on the wire. Named apart from malformed JSON because the
    // fix differs: the producer's text encoder adds it (a .NET or Windows default).
    if text.starts_with('\u{feff}') {
        return Err(reject(
            RejectReason::ByteOrderMark,
            "payload starts with a UTF-8 byte-order mark (EF BB BF); JSON sent over a network must \
             not carry one (RFC 8259, section 8.1): encode the payload without it",
        ));
    }
    let (value, duplicate) = parse_strict(text).map_err(|e| {
        reject(
            RejectReason::MalformedJson,
            format!("payload is not JSON: {e}"),
        )
    })?;
    // serde_json keeps the last of two equal keys; a reader that keeps the first would see
    // another user or event type in the same bytes. Neither is trusted.
    if let Some(name) = duplicate {
        return Err(reject(
            RejectReason::DuplicateField,
            format!("field `{}` appears more than once", truncate(&name, 64)),
        ));
    }
    let Value::Object(obj) = value else {
        return Err(reject(
            RejectReason::NotAnObject,
            "payload is JSON but not an object",
        ));
    };
    let fields = Fields { obj: &obj, limits };
    let type_name = fields.string("event_type")?;
    let event_type = EventType::parse(type_name).ok_or_else(|| {
        reject(
            RejectReason::UnknownEventType,
            format!(
                "event_type `{}` is not one of click, purchase, inventory, shipment, supplier_delay, demand",
                truncate(type_name, 64)
            ),
        )
    })?;

    let event = match event_type {
        EventType::Click | EventType::Purchase => decode_user_event(event_type, &fields)?,
        EventType::Inventory => {
            fields.only(&["event_type", "sku", "location", "on_hand", "timestamp_ms"])?;
            Event::Supply(SupplyEvent::Inventory {
                sku: fields.id("sku")?,
                location: fields.id("location")?,
                on_hand: fields.int_in("on_hand", 0, limits.max_quantity)?,
                timestamp_ms: fields.int("timestamp_ms")?,
            })
        }
        EventType::Shipment => {
            fields.only(&[
                "event_type",
                "shipment_id",
                "sku",
                "location",
                "quantity",
                "direction",
                "status",
                "expected_arrival_ms",
                "timestamp_ms",
            ])?;
            Event::Supply(SupplyEvent::Shipment {
                shipment_id: fields.id("shipment_id")?,
                sku: fields.id("sku")?,
                location: fields.id("location")?,
                quantity: fields.int_in("quantity", 1, limits.max_quantity)?,
                direction: fields.choice("direction")?,
                status: fields.choice("status")?,
                expected_arrival_ms: fields.int("expected_arrival_ms")?,
                timestamp_ms: fields.int("timestamp_ms")?,
            })
        }
        EventType::SupplierDelay => {
            fields.only(&[
                "event_type",
                "supplier",
                "sku",
                "location",
                "delay_hours",
                "new_expected_arrival_ms",
                "timestamp_ms",
            ])?;
            let delay_hours = fields.number("delay_hours")?;
            if !(0.0..=24.0 * 365.0).contains(&delay_hours) {
                return Err(reject(
                    RejectReason::OutOfRange,
                    format!("delay_hours {delay_hours} is outside 0..=8760"),
                ));
            }
            Event::Supply(SupplyEvent::SupplierDelay {
                supplier: fields.id("supplier")?,
                sku: fields.id("sku")?,
                location: fields.id("location")?,
                delay_hours,
                new_expected_arrival_ms: fields.int("new_expected_arrival_ms")?,
                timestamp_ms: fields.int("timestamp_ms")?,
            })
        }
        EventType::Demand => {
            fields.only(&[
                "event_type",
                "sku",
                "location",
                "quantity",
                "timestamp_ms",
                "source",
            ])?;
            Event::Supply(SupplyEvent::Demand {
                sku: fields.id("sku")?,
                location: fields.id("location")?,
                quantity: fields.int_in("quantity", 1, limits.max_quantity)?,
                timestamp_ms: fields.int("timestamp_ms")?,
                source: fields.source("source")?,
            })
        }
    };
    check_timestamp(fields.int("timestamp_ms")?, limits, now_ms)?;
    check_key(msg, &event)?;
    Ok(event)
}

fn decode_user_event(event_type: EventType, fields: &Fields) -> Result<Event, Rejection> {
    let limits = fields.limits;
    let event = if event_type == EventType::Click {
        fields.only(&[
            "event_type",
            "user_id",
            "item_id",
            "timestamp_ms",
            "session_id",
        ])?;
        UserEvent {
            event_type,
            user_id: fields.id("user_id")?,
            item_id: fields.id("item_id")?,
            timestamp_ms: fields.int("timestamp_ms")?,
            quantity: None,
            price: None,
            location: None,
            session_id: fields.optional(|f| f.id("session_id"), "session_id")?,
        }
    } else {
        fields.only(&[
            "event_type",
            "user_id",
            "item_id",
            "timestamp_ms",
            "quantity",
            "price",
            "location",
            "session_id",
        ])?;
        let price = fields.optional(|f| f.number("price"), "price")?;
        if let Some(p) = price {
            if !(0.0..=1e9).contains(&p) {
                return Err(reject(
                    RejectReason::OutOfRange,
                    format!("price {p} is outside 0..=1e9"),
                ));
            }
        }
        UserEvent {
            event_type,
            user_id: fields.id("user_id")?,
            item_id: fields.id("item_id")?,
            timestamp_ms: fields.int("timestamp_ms")?,
            quantity: Some(
                fields
                    .optional(|f| f.int_in("quantity", 1, limits.max_quantity), "quantity")?
                    .unwrap_or(1),
            ),
            price,
            location: fields.optional(|f| f.id("location"), "location")?,
            session_id: fields.optional(|f| f.id("session_id"), "session_id")?,
        }
    };
    Ok(Event::User(event))
}

fn check_timestamp(ts: i64, limits: &LimitsConfig, now_ms: i64) -> Result<(), Rejection> {
    if ts > now_ms.saturating_add(limits.max_future_skew_ms) {
        return Err(reject(
            RejectReason::TimestampInFuture,
            format!(
                "timestamp_ms {ts} is more than limits.max_future_skew_ms ({} ms) ahead of now ({now_ms})",
                limits.max_future_skew_ms
            ),
        ));
    }
    if ts < limits.min_timestamp_ms {
        return Err(reject(
            RejectReason::TimestampTooOld,
            format!(
                "timestamp_ms {ts} is before limits.min_timestamp_ms ({})",
                limits.min_timestamp_ms
            ),
        ));
    }
    Ok(())
}

/// The partition key: user events are keyed by user id and supply events by `sku@location`, so that
/// one user's (or one stock position's) events stay in order on one partition and one consumer.
pub fn expected_key(event: &Event) -> String {
    match event {
        Event::User(e) => e.user_id.clone(),
        Event::Supply(
            SupplyEvent::Inventory { sku, location, .. }
            | SupplyEvent::Shipment { sku, location, .. }
            | SupplyEvent::SupplierDelay { sku, location, .. }
            | SupplyEvent::Demand { sku, location, .. },
        ) => format!("{sku}@{location}"),
    }
}

fn check_key(msg: &InMessage, event: &Event) -> Result<(), Rejection> {
    let expected = expected_key(event);
    match msg.key.as_deref() {
        None => Err(reject(
            RejectReason::MissingKey,
            format!("message has no key; produce it keyed by `{expected}`"),
        )),
        Some([]) => Err(reject(
            RejectReason::EmptyKey,
            format!("message key is empty; produce it keyed by `{expected}`"),
        )),
        Some(key) if key != expected.as_bytes() => Err(reject(
            RejectReason::KeyMismatch,
            format!(
                "message key `{}` does not match `{expected}`; a wrong key sends events to another partition's memory",
                truncate(&String::from_utf8_lossy(key), 64)
            ),
        )),
        Some(_) => Ok(()),
    }
}

fn truncate(s: &str, max_chars: usize) -> String {
    if s.chars().count() <= max_chars {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(max_chars).collect::<String>())
    }
}

/// Whether `c` is a control (Cc) or format (Cf) character, which ids may not contain.
pub fn is_forbidden_in_id(c: char) -> bool {
    matches!(
        get_general_category(c),
        GeneralCategory::Control | GeneralCategory::Format
    )
}

/// Parses JSON as `serde_json::from_str::<Value>` does, and also returns the first key that an
/// object (at any depth) repeats.
fn parse_strict(text: &str) -> Result<(Value, Option<String>), serde_json::Error> {
    let duplicate = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_str(text);
    let value = StrictValue(&duplicate).deserialize(&mut de)?;
    de.end()?;
    Ok((value, duplicate.into_inner()))
}

/// Builds a [`Value`], noting a repeated object key instead of letting the later one win.
#[derive(Clone, Copy)]
struct StrictValue<'a>(&'a RefCell<Option<String>>);

impl<'de> DeserializeSeed<'de> for StrictValue<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element_seed(self)? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut obj = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(self)?;
            if obj.contains_key(&key) {
                self.0.borrow_mut().get_or_insert(key);
            } else {
                obj.insert(key, value);
            }
        }
        Ok(Value::Object(obj))
    }
}

/// Typed access to an event object's fields, each failure a typed rejection naming the field.
struct Fields<'a> {
    obj: &'a Map<String, Value>,
    limits: &'a LimitsConfig,
}

impl<'a> Fields<'a> {
    fn get(&self, name: &str) -> Result<&'a Value, Rejection> {
        match self.obj.get(name) {
            None => Err(reject(
                RejectReason::MissingField,
                format!("required field `{name}` is missing"),
            )),
            Some(Value::Null) => Err(reject(
                RejectReason::WrongType,
                format!("field `{name}` is null; leave it out or give a value"),
            )),
            Some(v) => Ok(v),
        }
    }

    fn optional<T>(
        &self,
        read: impl FnOnce(&Self) -> Result<T, Rejection>,
        name: &str,
    ) -> Result<Option<T>, Rejection> {
        match self.obj.get(name) {
            None => Ok(None),
            Some(_) => read(self).map(Some),
        }
    }

    /// `{"topic": .., "partition": .., "offset": ..}`: the message a derived record came from.
    fn source(&self, name: &str) -> Result<SourceRef, Rejection> {
        let Value::Object(obj) = self.get(name)? else {
            return Err(reject(
                RejectReason::WrongType,
                format!("field `{name}` must be an object with topic, partition, offset"),
            ));
        };
        let inner = Fields {
            obj,
            limits: self.limits,
        };
        inner.only(&["topic", "partition", "offset"])?;
        Ok(SourceRef {
            topic: inner.id("topic")?,
            partition: inner.int_in("partition", 0, i32::MAX as i64)? as i32,
            offset: inner.int_in("offset", 0, i64::MAX)?,
        })
    }

    fn only(&self, allowed: &[&str]) -> Result<(), Rejection> {
        match self.obj.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(k) => Err(reject(
                RejectReason::UnknownField,
                format!(
                    "field `{}` is not part of this event type; allowed: {}",
                    truncate(k, 64),
                    allowed.join(", ")
                ),
            )),
            None => Ok(()),
        }
    }

    fn string(&self, name: &str) -> Result<&'a str, Rejection> {
        self.get(name)?.as_str().ok_or_else(|| {
            reject(
                RejectReason::WrongType,
                format!("field `{name}` must be a string"),
            )
        })
    }

    /// An identifier: a non-empty string of at most `limits.max_id_len` characters, no control characters.
    fn id(&self, name: &str) -> Result<String, Rejection> {
        let s = self.string(name)?;
        if s.trim().is_empty() {
            return Err(reject(
                RejectReason::InvalidValue,
                format!("field `{name}` is empty"),
            ));
        }
        if s.chars().count() > self.limits.max_id_len {
            return Err(reject(
                RejectReason::InvalidValue,
                format!(
                    "field `{name}` is longer than limits.max_id_len ({})",
                    self.limits.max_id_len
                ),
            ));
        }
        // Control (Cc) and format (Cf) characters are invisible: U+202E reverses the text around
        // it, U+200B joins nothing, so two ids that print the same would be two users.
        if let Some(c) = s.chars().find(|c| is_forbidden_in_id(*c)) {
            return Err(reject(
                RejectReason::ForbiddenCharacter,
                format!(
                    "field `{name}` contains U+{:04X}, a control or format character (Unicode \
                     categories Cc, Cf), which ids may not contain",
                    c as u32
                ),
            ));
        }
        Ok(s.to_string())
    }

    fn int(&self, name: &str) -> Result<i64, Rejection> {
        let v = self.get(name)?;
        // JSON Schema counts 3.0 as an integer; so do we.
        let integral_float = v
            .as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
            .map(|f| f as i64);
        v.as_i64().or(integral_float).ok_or_else(|| {
            reject(
                RejectReason::WrongType,
                format!(
                    "field `{name}` must be an integer, got {}",
                    truncate(&v.to_string(), 32)
                ),
            )
        })
    }

    fn int_in(&self, name: &str, min: i64, max: i64) -> Result<i64, Rejection> {
        let v = self.int(name)?;
        if (min..=max).contains(&v) {
            Ok(v)
        } else {
            Err(reject(
                RejectReason::OutOfRange,
                format!("field `{name}` is {v}; allowed {min}..={max}"),
            ))
        }
    }

    fn number(&self, name: &str) -> Result<f64, Rejection> {
        self.get(name)?.as_f64().ok_or_else(|| {
            reject(
                RejectReason::WrongType,
                format!("field `{name}` must be a number"),
            )
        })
    }

    fn choice<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<T, Rejection> {
        let s = self.string(name)?;
        T::deserialize(serde_json::Value::String(s.to_string()))
            .map_err(|e| reject(RejectReason::InvalidValue, format!("field `{name}`: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    fn msg(key: Option<&str>, payload: &str) -> InMessage {
        InMessage {
            topic: "events".into(),
            partition: 0,
            offset: 7,
            key: key.map(|k| k.as_bytes().to_vec()),
            payload: Some(payload.as_bytes().to_vec()),
            kafka_timestamp_ms: Some(NOW),
            polled_at_ms: NOW,
        }
    }

    fn decode_str(key: Option<&str>, payload: &str) -> Result<Event, Rejection> {
        decode(&msg(key, payload), &LimitsConfig::default(), NOW)
    }

    #[test]
    fn valid_click_and_purchase() {
        let e = decode_str(
            Some("u1"),
            r#"{"event_type":"click","user_id":"u1","item_id":"i9","timestamp_ms":1700000000000}"#,
        )
        .unwrap();
        assert_eq!(e.event_type(), EventType::Click);
        let e = decode_str(
            Some("u1"),
            r#"{"event_type":"purchase","user_id":"u1","item_id":"i9","timestamp_ms":1700000000000,"quantity":3,"price":9.5}"#,
        )
        .unwrap();
        match e {
            Event::User(u) => assert_eq!((u.quantity, u.price), (Some(3), Some(9.5))),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn valid_supply_events() {
        let e = decode_str(
            Some("sku1@dc1"),
            r#"{"event_type":"shipment","shipment_id":"s1","sku":"sku1","location":"dc1","quantity":5,"direction":"inbound","status":"in_transit","expected_arrival_ms":1700000100000,"timestamp_ms":1700000000000}"#,
        )
        .unwrap();
        assert_eq!(e.event_type(), EventType::Shipment);
    }

    #[test]
    fn each_rule_has_its_reason() {
        let ok =
            r#"{"event_type":"click","user_id":"u1","item_id":"i","timestamp_ms":1700000000000}"#;
        let cases: &[(Option<&str>, &str, RejectReason)] = &[
            (Some("u1"), "", RejectReason::EmptyPayload),
            (Some("u1"), "{", RejectReason::MalformedJson),
            (
                Some("u1"),
                "\u{feff}{\"event_type\":\"click\",\"user_id\":\"u1\",\"item_id\":\"i\",\"timestamp_ms\":1700000000000}",
                RejectReason::ByteOrderMark,
            ),
            (
                Some("b2"),
                r#"{"event_type":"click","user_id":"b1","item_id":"i","timestamp_ms":1700000000000,"user_id":"b2"}"#,
                RejectReason::DuplicateField,
            ),
            (
                Some("sku1@dc1"),
                r#"{"event_type":"demand","sku":"sku1","location":"dc1","quantity":1,"timestamp_ms":1700000000000,"source":{"topic":"t","partition":0,"offset":1,"offset":2}}"#,
                RejectReason::DuplicateField,
            ),
            (
                Some("b1\u{202e}"),
                "{\"event_type\":\"click\",\"user_id\":\"b1\u{202e}\",\"item_id\":\"i\",\"timestamp_ms\":1700000000000}",
                RejectReason::ForbiddenCharacter,
            ),
            (
                Some("u1"),
                r#"{"event_type":"click","user_id":"u1","item_id":"a\u200bb","timestamp_ms":1700000000000}"#,
                RejectReason::ForbiddenCharacter,
            ),
            (Some("u1"), "[1,2]", RejectReason::NotAnObject),
            (None, ok, RejectReason::MissingKey),
            (Some(""), ok, RejectReason::EmptyKey),
            (Some("u2"), ok, RejectReason::KeyMismatch),
            (
                Some("u1"),
                r#"{"event_type":"view","user_id":"u1"}"#,
                RejectReason::UnknownEventType,
            ),
            (
                Some("u1"),
                r#"{"user_id":"u1"}"#,
                RejectReason::MissingField,
            ),
            (
                Some("u1"),
                r#"{"event_type":"click","user_id":"u1","timestamp_ms":1700000000000}"#,
                RejectReason::MissingField,
            ),
            (
                Some("u1"),
                r#"{"event_type":"click","user_id":"u1","item_id":"i","timestamp_ms":1700000000000,"x":1}"#,
                RejectReason::UnknownField,
            ),
            (
                Some("u1"),
                r#"{"event_type":"click","user_id":1,"item_id":"i","timestamp_ms":1700000000000}"#,
                RejectReason::WrongType,
            ),
            (
                Some("u1"),
                r#"{"event_type":"click","user_id":"u1","item_id":"i","timestamp_ms":"yesterday"}"#,
                RejectReason::WrongType,
            ),
            (
                Some("u1"),
                r#"{"event_type":"click","user_id":"u1","item_id":" ","timestamp_ms":1700000000000}"#,
                RejectReason::InvalidValue,
            ),
            (
                Some("u1"),
                r#"{"event_type":"purchase","user_id":"u1","item_id":"i","timestamp_ms":1700000000000,"quantity":-2}"#,
                RejectReason::OutOfRange,
            ),
            (
                Some("u1"),
                r#"{"event_type":"click","user_id":"u1","item_id":"i","timestamp_ms":4102444800000}"#,
                RejectReason::TimestampInFuture,
            ),
            (
                Some("u1"),
                r#"{"event_type":"click","user_id":"u1","item_id":"i","timestamp_ms":0}"#,
                RejectReason::TimestampTooOld,
            ),
        ];
        for (key, payload, reason) in cases {
            let got = decode_str(*key, payload).unwrap_err();
            assert_eq!(got.reason, *reason, "{payload}: {}", got.detail);
        }
        let mut bad = msg(Some("u1"), "");
        bad.payload = Some(vec![b'{', 0xff, 0xfe, b'}']);
        assert_eq!(
            decode(&bad, &LimitsConfig::default(), NOW)
                .unwrap_err()
                .reason,
            RejectReason::InvalidUtf8
        );
        let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(70_000));
        assert_eq!(
            decode_str(Some("u1"), &big).unwrap_err().reason,
            RejectReason::Oversize
        );
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics() {
        // A cheap deterministic fuzz over mutations of a valid event.
        let base = br#"{"event_type":"purchase","user_id":"u1","item_id":"i","timestamp_ms":1700000000000,"quantity":2}"#;
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..20_000 {
            let mut bytes = base.to_vec();
            for _ in 0..3 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let at = (state as usize) % bytes.len();
                bytes[at] = (state >> 32) as u8;
            }
            let mut m = msg(Some("u1"), "");
            m.payload = Some(bytes);
            let _ = decode(&m, &LimitsConfig::default(), NOW);
        }
    }

    #[test]
    fn ids_refuse_control_and_format_characters_only() {
        for c in [
            '\u{0}',
            '\u{7}',
            '\u{85}',
            '\u{ad}',
            '\u{200b}',
            '\u{200e}',
            '\u{202e}',
            '\u{2066}',
            '\u{feff}',
            '\u{e0041}',
        ] {
            assert!(is_forbidden_in_id(c), "U+{:04X}", c as u32);
        }
        for c in ['a', 'ü', '用', ' ', '-', '@', '\u{1f600}', '\u{300}'] {
            assert!(!is_forbidden_in_id(c), "U+{:04X}", c as u32);
        }
    }

    #[test]
    fn equal_keys_at_any_depth_are_found_and_distinct_keys_parse_as_serde_json_does() {
        let (_, dup) = parse_strict(r#"{"a":1,"b":{"c":[{"d":1,"d":2}]}}"#).unwrap();
        assert_eq!(dup.as_deref(), Some("d"));
        let text = r#"{"a":1.5,"b":[true,null,"x",-3,18446744073709551615],"c":{"d":{}}}"#;
        let (value, dup) = parse_strict(text).unwrap();
        assert_eq!(dup, None);
        assert_eq!(value, serde_json::from_str::<Value>(text).unwrap());
        assert!(parse_strict(r#"{"a":1} x"#).is_err(), "trailing characters");
    }

    use proptest::prelude::Strategy;

    proptest::proptest! {
        /// Any bytes at all: an event or a typed rejection, never a panic.
        #[test]
        fn any_bytes_decode_to_an_event_or_a_typed_reject(
            key in proptest::option::of(proptest::collection::vec(proptest::num::u8::ANY, 0..16)),
            payload in proptest::collection::vec(proptest::num::u8::ANY, 0..256),
        ) {
            let m = InMessage { key, payload: Some(payload), ..msg(None, "") };
            if let Err(r) = decode(&m, &LimitsConfig::default(), NOW) {
                proptest::prop_assert!(RejectReason::ALL.contains(&r.reason));
                proptest::prop_assert!(!r.detail.is_empty());
            }
        }

        /// JSON-shaped text built from the fields events use, with any values: the same.
        #[test]
        fn any_json_objects_decode_to_an_event_or_a_typed_reject(
            fields in proptest::collection::vec(
                (
                    proptest::sample::select(vec!["event_type", "user_id", "item_id", "timestamp_ms", "quantity", "price", "sku", "location", "on_hand", "source", "x"]),
                    proptest::prop_oneof![
                        proptest::sample::select(vec!["\"click\"", "\"purchase\"", "\"inventory\"", "\"demand\"", "\"u1\"", "1700000000000", "-1", "1e400", "null", "[]", "{}", "\"\\u202e\"", "\"\\ud800\""]).prop_map(String::from),
                        ".{0,12}".prop_map(|s| serde_json::to_string(&s).unwrap()),
                        proptest::num::i64::ANY.prop_map(|n| n.to_string()),
                    ],
                ),
                0..8,
            ),
        ) {
            let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            let m = msg(Some("u1"), &format!("{{{}}}", body.join(",")));
            if let Err(r) = decode(&m, &LimitsConfig::default(), NOW) {
                proptest::prop_assert!(RejectReason::ALL.contains(&r.reason));
            }
        }
    }

    #[test]
    fn dead_letter_keeps_original_bytes() {
        use base64::Engine as _;
        let mut m = msg(None, "");
        m.payload = Some(vec![0xff, 0x00, 0x41]);
        let r = decode(&m, &LimitsConfig::default(), NOW).unwrap_err();
        let d = DeadLetter::new(&m, r, NOW, 1024);
        let back = base64::engine::general_purpose::STANDARD
            .decode(&d.payload_base64)
            .unwrap();
        assert_eq!(back, vec![0xff, 0x00, 0x41]);
        assert_eq!(d.reason, RejectReason::InvalidUtf8);
        assert_eq!(d.key_base64, None);
        assert_eq!(d.source.offset, 7);
        assert!(!d.payload_truncated && !d.key_truncated);
    }

    #[test]
    fn dead_letter_keeps_the_first_bytes_of_a_huge_message() {
        use base64::Engine as _;
        let mut m = msg(Some(&"k".repeat(5000)), "");
        m.payload = Some(vec![b'x'; 900_000]);
        let r = decode(&m, &LimitsConfig::default(), NOW).unwrap_err();
        assert_eq!(r.reason, RejectReason::Oversize);
        let d = DeadLetter::new(&m, r, NOW, 1024);
        let b64 = base64::engine::general_purpose::STANDARD;
        assert_eq!(b64.decode(&d.payload_base64).unwrap(), vec![b'x'; 1024]);
        assert!(d.payload_truncated);
        assert_eq!(d.payload_bytes, 900_000);
        assert_eq!(b64.decode(d.key_base64.unwrap()).unwrap(), vec![b'k'; 1024]);
        assert!(d.key_truncated);
    }
}
