//! `LONGMEM__SECTION__KEY` environment overrides, applied to the TOML tree before it is typed.

use super::{ConfigError, ENV_PREFIX};

/// Applies one `LONGMEM__A__B=value` override to the TOML tree. The value is read as a TOML value
/// (`1024`, `true`, `["a","b"]`) and otherwise taken as a string; a comma-separated string sets a list.
/// Below `kafka.properties`, `kafka.consumer` and `kafka.producer`, `_` in the name stands for `.`
/// (`LONGMEM__KAFKA__PROPERTIES__SASL_MECHANISM` sets `sasl.mechanism`).
pub(super) fn apply_override(
    tree: &mut toml::Table,
    var: &str,
    raw: &str,
) -> Result<(), ConfigError> {
    let env_error = |message: &str| ConfigError::Env {
        var: var.to_string(),
        message: message.to_string(),
    };
    let mut path: Vec<String> = var[ENV_PREFIX.len()..]
        .split("__")
        .map(|s| s.to_ascii_lowercase())
        .collect();
    if path.iter().any(|s| s.is_empty()) {
        return Err(env_error("has an empty section; use LONGMEM__SECTION__KEY"));
    }
    let librdkafka_property = path.len() == 3
        && path[0] == "kafka"
        && ["properties", "consumer", "producer"].contains(&path[1].as_str());
    if librdkafka_property {
        path[2] = path[2].replace('_', ".");
    }
    let (last, parents) = path.split_last().expect("split yields at least one part");
    let mut table = tree;
    for part in parents {
        let entry = table
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry
            .as_table_mut()
            .ok_or_else(|| env_error(&format!("`{part}` is a value, not a section")))?;
    }
    let existing_is_list = matches!(table.get(last), Some(toml::Value::Array(_)));
    let value = match format!("v = {raw}").parse::<toml::Table>() {
        // librdkafka takes every property as a string, `10` included.
        _ if librdkafka_property => toml::Value::String(raw.to_string()),
        Ok(mut t) => t.remove("v").expect("parsed table has v"),
        Err(_) if existing_is_list => toml::Value::Array(
            raw.split(',')
                .map(|s| toml::Value::String(s.trim().to_string()))
                .filter(|v| v.as_str() != Some(""))
                .collect(),
        ),
        Err(_) => toml::Value::String(raw.to_string()),
    };
    // A string setting must stay a string even when it looks like a number (`group_id = 42`).
    let value = match (table.get(last), value) {
        (Some(toml::Value::String(_)), v) if !v.is_str() => toml::Value::String(raw.to_string()),
        (_, v) => v,
    };
    table.insert(last.clone(), value);
    Ok(())
}
