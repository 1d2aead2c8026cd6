//! The public data sets the tools read from `../shared/data`, and how each becomes longmem events.
//!
//! MovieLens → commerce lives here and only here: a rating ≥ 4 is a `purchase`, any other rating a
//! `click`; user and item ids are MovieLens's; the event time is the rating's timestamp.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{bail, Context};

use crate::event::{EventType, UserEvent};

/// One MovieLens rating as a longmem event.
pub struct ReplayEvent {
    pub user_id: String,
    pub item_id: String,
    pub timestamp_ms: i64,
    pub purchase: bool,
}

impl ReplayEvent {
    /// The event as the daemon reads it.
    pub fn event(&self) -> UserEvent {
        let kind = if self.purchase {
            EventType::Purchase
        } else {
            EventType::Click
        };
        UserEvent::new(kind, &self.user_id, &self.item_id, self.timestamp_ms)
    }

    /// The event's JSON, serialised from the event type the daemon decodes into.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.event()).expect("a UserEvent always serialises")
    }
}

/// Ratings from `ml-100k.inter`, ordered by timestamp (ties in file order).
pub fn movielens_events(dir: &Path) -> anyhow::Result<Vec<ReplayEvent>> {
    let path = dir.join("ml-100k.inter");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read {}; the demo needs MovieLens-100k from ../shared/data (pass --data DIR)",
            path.display()
        )
    })?;
    let mut events = Vec::new();
    for (n, line) in text.lines().enumerate().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        let parsed = (f.len() == 4)
            .then(|| Some((f[2].parse::<f64>().ok()?, f[3].parse::<f64>().ok()?)))
            .flatten();
        let Some((rating, ts)) = parsed else {
            bail!(
                "{}:{}: expected `user item rating timestamp`",
                path.display(),
                n + 1
            );
        };
        events.push(ReplayEvent {
            user_id: f[0].to_string(),
            item_id: f[1].to_string(),
            timestamp_ms: (ts * 1000.0) as i64,
            purchase: rating >= 4.0,
        });
    }
    events.sort_by_key(|e| e.timestamp_ms);
    Ok(events)
}

pub fn movielens_titles(dir: &Path) -> HashMap<String, String> {
    let Ok(text) = std::fs::read_to_string(dir.join("ml-100k.item")) else {
        return HashMap::new();
    };
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f.len() >= 3).then(|| (f[0].to_string(), format!("{} ({})", f[1], f[2])))
        })
        .collect()
}

/// SupplyGraph's products with their daily sales orders and their plant × storage locations.
pub struct SupplyGraph {
    pub products: Vec<String>,
    /// demand[p][day], units (sales orders).
    pub demand: Vec<Vec<f64>>,
    /// production[p][day], units: what the plant makes, and so what replenishment can deliver.
    pub production: Vec<Vec<f64>>,
    pub locations: BTreeMap<String, Vec<String>>,
}

/// One of SupplyGraph's daily unit series: (product names, series[product][day]).
fn load_series(path: &Path) -> anyhow::Result<(Vec<String>, Vec<Vec<f64>>)> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read {} (SupplyGraph's homogeneous/ folder expected)",
            path.display()
        )
    })?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let products: Vec<String> = header[1..].iter().map(|s| s.trim().to_string()).collect();
    let mut series = vec![Vec::new(); products.len()];
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let cells: Vec<&str> = line.split(',').collect();
        for (p, values) in series.iter_mut().enumerate() {
            let v = cells.get(p + 1).map(|c| c.trim()).unwrap_or("");
            values.push(if v.is_empty() {
                0.0
            } else {
                v.parse::<f64>()
                    .with_context(|| format!("{}: `{v}`", path.display()))?
                    .max(0.0)
            });
        }
    }
    Ok((products, series))
}

pub fn load_supplygraph(dir: &Path) -> anyhow::Result<SupplyGraph> {
    let (products, demand) = load_series(&dir.join("Temporal_Data/Unit/Sales_Order.csv"))?;
    let production_path = dir.join("Temporal_Data/Unit/Production.csv");
    let (made, production) = load_series(&production_path)?;
    if made != products {
        bail!(
            "{}: its products differ from the sales orders'",
            production_path.display()
        );
    }
    let nodes = dir.join("Nodes/Nodes_Type_Plant_Storage.csv");
    let text = std::fs::read_to_string(&nodes)
        .with_context(|| format!("cannot read {}", nodes.display()))?;
    let mut locations: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines().skip(1) {
        let cells: Vec<&str> = line.split(',').collect();
        if cells.len() < 3 {
            continue;
        }
        let storage = cells[2].trim().trim_end_matches(".0");
        let location = format!("plant-{}/sl-{}", cells[1].trim(), storage);
        let list = locations.entry(cells[0].trim().to_string()).or_default();
        if !list.contains(&location) {
            list.push(location);
        }
    }
    Ok(SupplyGraph {
        products,
        demand,
        production,
        locations,
    })
}

/// Delivery delays in days from the SCMS history: delivered minus scheduled date, early = 0.
/// What the simulator takes from the SCMS delivery history, in days.
pub struct ScmsHistory {
    /// Delivered minus scheduled date (early counts as on time), capped at 60.
    pub delays: Vec<i64>,
    /// Scheduled delivery minus PO sent to vendor, where both are known and positive.
    pub lead_times: Vec<i64>,
}

pub fn load_scms(path: &Path) -> anyhow::Result<ScmsHistory> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let text = String::from_utf8_lossy(&bytes).replace('\r', "\n");
    let mut rows = csv_rows(&text);
    let header = rows.next().context("SCMS file is empty")?;
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h.trim_start_matches('\u{feff}') == name)
    };
    let (Some(po_sent), Some(scheduled), Some(delivered)) = (
        col("PO Sent to Vendor Date"),
        col("Scheduled Delivery Date"),
        col("Delivered to Client Date"),
    ) else {
        bail!(
            "{}: no `PO Sent to Vendor Date` / `Scheduled Delivery Date` / `Delivered to Client Date` columns",
            path.display()
        );
    };
    let mut history = ScmsHistory {
        delays: Vec::new(),
        lead_times: Vec::new(),
    };
    for row in rows {
        let Some(s) = row.get(scheduled).and_then(|v| scms_day(v)) else {
            continue;
        };
        if let Some(d) = row.get(delivered).and_then(|v| scms_day(v)) {
            history.delays.push((d - s).clamp(0, 60));
        }
        if let Some(po) = row.get(po_sent).and_then(|v| us_day(v)) {
            if s > po {
                history.lead_times.push(s - po);
            }
        }
    }
    if history.delays.len() < 100 || history.lead_times.len() < 100 {
        bail!(
            "{}: only {} rows with both delivery dates and {} with a PO date before the scheduled one",
            path.display(),
            history.delays.len(),
            history.lead_times.len()
        );
    }
    Ok(history)
}

/// Days since 1970 of an SCMS date such as `11/13/06` (month/day/two-digit year).
fn us_day(s: &str) -> Option<i64> {
    let mut parts = s.trim().split('/');
    let month: usize = parts.next()?.parse().ok()?;
    let day = parts.next()?;
    let year = parts.next()?;
    let name = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .get(month.checked_sub(1)?)?;
    scms_day(&format!("{day}-{name}-{year}"))
}

/// Days since 1970 of an SCMS date such as `2-Jun-06`.
fn scms_day(s: &str) -> Option<i64> {
    let mut parts = s.trim().split('-');
    let day: i64 = parts.next()?.parse().ok()?;
    let name = parts.next()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| *m == name)? as i64
        + 1;
    let year: i64 = 2000 + parts.next()?.parse::<i64>().ok()?;
    // Days from civil (Howard Hinnant's algorithm).
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

/// A minimal CSV reader: commas, double-quoted fields with "" escapes.
fn csv_rows(text: &str) -> impl Iterator<Item = Vec<String>> + '_ {
    text.lines().filter(|l| !l.trim().is_empty()).map(|line| {
        let mut fields = Vec::new();
        let mut field = String::new();
        let mut quoted = false;
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            match (c, quoted) {
                ('"', true) if chars.peek() == Some(&'"') => {
                    field.push('"');
                    chars.next();
                }
                ('"', _) => quoted = !quoted,
                (',', false) => fields.push(std::mem::take(&mut field)),
                (c, _) => field.push(c),
            }
        }
        fields.push(field);
        fields
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scms_dates_are_read() {
        assert_eq!(scms_day("1-Jan-70"), Some(36_525)); // two-digit years are 20xx
        assert_eq!(
            scms_day("2-Jun-06").unwrap() - scms_day("1-Jun-06").unwrap(),
            1
        );
        assert_eq!(
            scms_day("1-Mar-08").unwrap() - scms_day("28-Feb-08").unwrap(),
            2,
            "2008 is a leap year"
        );
        assert_eq!(scms_day("Date Not Captured"), None);
        assert_eq!(us_day("11/13/06"), scms_day("13-Nov-06"));
        assert_eq!(us_day("N/A - From RDC"), None);
    }

    #[test]
    fn quoted_csv_fields_keep_their_commas() {
        let rows: Vec<Vec<String>> = csv_rows("a,\"b, c\",\"d \"\"e\"\"\"\n1,2,3").collect();
        assert_eq!(rows[0], vec!["a", "b, c", "d \"e\""]);
        assert_eq!(rows[1].len(), 3);
    }
}
