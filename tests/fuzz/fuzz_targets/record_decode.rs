//! The record decode path as the engine runs it: the Confluent wire format (magic byte, schema
//! id), the Avro datum decoded straight into the fraud-detector's typed `Transaction` against
//! the writer schema (serde_avro_fast, as `verdict_runtime::serde::Codec::decode` does), then
//! the fraud-detector's checks of it. Nothing may panic, whatever the bytes.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;

/// The service's clock for the checks (2026-12-01): fixed, so a finding replays the same.
const NOW_MS: i64 = 1_796_083_200_000;

static SCHEMA: LazyLock<serde_avro_fast::Schema> = LazyLock::new(|| {
    include_str!("../../../schemas/transaction_event.avsc")
        .parse()
        .expect("the committed schema parses")
});

fuzz_target!(|data: &[u8]| {
    if verdict_runtime::serde::schema_id(data).is_none() {
        return;
    }
    let datum = data.get(5..).unwrap_or_default();
    if let Ok(tx) = serde_avro_fast::from_datum_slice::<fraud_detector::pipeline::Transaction>(
        datum, &SCHEMA,
    ) {
        let _ = fraud_detector::pipeline::check(tx, NOW_MS);
    }
});
