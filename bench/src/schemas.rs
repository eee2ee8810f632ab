//! The schemas group (`--only schemas`): what validating payloads against
//! a JSON Schema costs. Order events with ten data fields, two of them
//! nested ([`crate::event::write_order`]), published as single events at
//! the largest connection count and as batches, each as `repeat`
//! interleaved pairs of runs on fresh stores: first without a schema for
//! the type, then with [`order_schema`] registered (every event is
//! validated and gets its `dataschema`). The pair with the median ratio
//! with ÷ without is reported (the target: validation costs at
//! most 10% of throughput, a ratio of at least 0.9).

use serde::Serialize;
use serde_json::{json, Value};

use crate::client::{self, Result};
use crate::event::ORDER_TYPE;
use crate::loadgen::{self, LoadResult, Work};
use crate::scenarios::{every_request_created, run_tag, say, AuthCompare, BenchConfig};
use crate::servers::Launcher;

/// The schema of the order events: types, formats, an enum, bounds, a
/// pattern, required members, nested objects and arrays.
pub fn order_schema() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": ["order_id", "customer", "items", "total", "currency", "status"],
        "additionalProperties": false,
        "properties": {
            "order_id": {"type": "string", "pattern": "^ord-[0-9]+$"},
            "customer": {
                "type": "object",
                "required": ["id", "email"],
                "properties": {
                    "id": {"type": "string", "minLength": 1},
                    "email": {"type": "string", "format": "email"},
                    "tier": {"enum": ["standard", "silver", "gold"]}
                }
            },
            "items": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["sku", "qty", "price"],
                    "properties": {
                        "sku": {"type": "string"},
                        "qty": {"type": "integer", "minimum": 1},
                        "price": {"type": "number", "minimum": 0}
                    }
                }
            },
            "total": {"type": "number", "minimum": 0},
            "currency": {"enum": ["EUR", "USD", "GBP"]},
            "status": {"enum": ["placed", "paid", "shipped"]},
            "created_at": {"type": "string", "format": "date-time"},
            "priority": {"type": "integer", "minimum": 0, "maximum": 9},
            "gift": {"type": "boolean"},
            "note": {"type": "string", "maxLength": 500}
        }
    })
}

/// Single events and batches without and with a schema.
#[derive(Debug, Clone, Serialize)]
pub struct SchemasDoc {
    /// The type validated and its schema.
    pub event_type: String,
    /// `POST /events` of one order event: `off` without a schema, `on`
    /// with one; `ratio` = on ÷ off.
    pub single: AuthCompare,
    /// `POST /events/batch` of `batch_size` order events.
    pub batch: AuthCompare,
}

fn side(on: bool) -> &'static str {
    if on {
        "with schema"
    } else {
        "without schema"
    }
}

/// Runs the group.
pub async fn run_schemas(cfg: &BenchConfig, launcher: &Launcher) -> Result<SchemasDoc> {
    let c = cfg.max_connections();
    let mut single = Vec::with_capacity(cfg.repeat);
    let mut batch = Vec::with_capacity(cfg.repeat);
    for i in 0..cfg.repeat {
        let mut pair = Vec::with_capacity(2);
        for on in [false, true] {
            say(
                cfg,
                &format!(
                    "schemas: single order events, {c} connections, run {}: {}",
                    i + 1,
                    side(on)
                ),
            );
            let work = Work::OrderSingle {
                tag: run_tag(&format!("schemas-{}", u8::from(on))),
            };
            pair.push(schema_run(cfg, launcher, &format!("single-{}", i + 1), on, &work, c).await?);
        }
        let on = pair.pop().expect("two runs");
        let off = pair.pop().expect("two runs");
        single.push((off, on));
        let mut pair = Vec::with_capacity(2);
        for on in [false, true] {
            say(
                cfg,
                &format!(
                    "schemas: batches of {} order events, {} connections, run {}: {}",
                    cfg.batch_size,
                    cfg.batch_connections,
                    i + 1,
                    side(on)
                ),
            );
            let work = Work::OrderBatch {
                tag: run_tag(&format!("schemas-batch-{}", u8::from(on))),
                size: cfg.batch_size,
            };
            let label = format!("batch-{}", i + 1);
            pair.push(schema_run(cfg, launcher, &label, on, &work, cfg.batch_connections).await?);
        }
        let on = pair.pop().expect("two runs");
        let off = pair.pop().expect("two runs");
        batch.push((off, on));
    }
    Ok(SchemasDoc {
        event_type: ORDER_TYPE.to_string(),
        single: AuthCompare::from_pairs("POST /events (order events)", c, 1, single),
        batch: AuthCompare::from_pairs(
            "POST /events/batch (order events)",
            cfg.batch_connections,
            cfg.batch_size as u64,
            batch,
        ),
    })
}

/// One run on a fresh store (deleted afterwards). With `on`, the schema is
/// registered first and the run fails unless `/stats` counts every event
/// as validated; without, it fails if any was.
async fn schema_run(
    cfg: &BenchConfig,
    launcher: &Launcher,
    label: &str,
    on: bool,
    work: &Work,
    connections: usize,
) -> Result<LoadResult> {
    let what = format!("schemas {}, {label}", side(on));
    let dir = cfg
        .work_dir
        .join(format!("schemas-{}-{label}", u8::from(on)));
    let server = launcher.msgbus(&dir).await?;
    let registered = if on {
        let mut conn = client::Conn::connect(server.addr).await?;
        let res = conn
            .send(
                hyper::Method::PUT,
                &format!("/schemas/{ORDER_TYPE}"),
                Some("application/json"),
                bytes::Bytes::from(order_schema().to_string()),
            )
            .await?;
        res.status.as_u16()
    } else {
        201
    };
    let result = if registered == 201 {
        match loadgen::closed_loop_with(server.addr, work, &cfg.closed(connections), None).await {
            Ok(r) => client::get_json(server.addr, "/stats")
                .await
                .map(|st| (r, st)),
            Err(e) => Err(e),
        }
    } else {
        Err(format!("{what}: PUT /schemas answered {registered}").into())
    };
    server.stop().await?;
    std::fs::remove_dir_all(&dir)?;
    let (r, stats) = result?;
    every_request_created(&r, &what)?;
    let validated = stats["schemas"]["validations"].as_u64().unwrap_or(0);
    let expected = if on { r.events_total } else { 0 };
    if validated != expected {
        return Err(
            format!("{what}: /stats counts {validated} validations, expected {expected}").into(),
        );
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every generated order event validates against the schema with the
    /// server's own compiler (a run with the schema would measure 422s
    /// otherwise), and the data has the ten fields the group promises.
    #[test]
    fn order_events_match_the_order_schema() {
        let validator = msgbus::schemas::compile(&order_schema()).expect("a valid schema");
        for (conn, n) in [(0, 0), (7, 123_456), (9_999, u64::MAX / 3)] {
            let ev: Value =
                serde_json::from_slice(&crate::event::order_single("tag", conn, n)).unwrap();
            assert_eq!(ev["type"], ORDER_TYPE);
            assert_eq!(ev["data"].as_object().unwrap().len(), 10);
            let errors: Vec<String> = validator
                .iter_errors(&ev["data"])
                .map(|e| e.to_string())
                .collect();
            assert!(errors.is_empty(), "{errors:?}");
        }
        let batch: Value =
            serde_json::from_slice(&crate::event::order_batch("tag", 1, 10, 100)).unwrap();
        assert_eq!(batch.as_array().unwrap().len(), 100);
    }
}
