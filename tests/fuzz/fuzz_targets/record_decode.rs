//! The record decode path: the Confluent wire format (magic byte, schema id), the Avro body
//! against the writer schema (TransactionEvent), the value as JSON, and the fraud-detector's
//! validation of it. Nothing may panic, whatever the bytes.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;

static SCHEMA: LazyLock<apache_avro::Schema> = LazyLock::new(|| {
    apache_avro::Schema::parse_str(include_str!("../../../schemas/transaction_event.avsc"))
        .expect("the committed schema parses")
});

fuzz_target!(|data: &[u8]| {
    if verdict_runtime::serde::schema_id(data).is_none() {
        return;
    }
    // As schema_registry_converter decodes: a datum reader over the writer schema.
    let mut body = data.get(5..).unwrap_or_default();
    let Ok(value) = apache_avro::reader::datum::GenericDatumReader::builder(&SCHEMA)
        .build()
        .and_then(|r| r.read_value(&mut body))
    else {
        return;
    };
    if let Ok(json) = serde_json::Value::try_from(value) {
        let _ = fraud_detector::pipeline::validate(&json);
    }
});
