//! The schema registry's parsing: a schema as a client sends it (canonical form, "same schema"
//! identity, compatibility with itself), and a record of the `_schemas` log (key and value as
//! they come from Kafka). Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use verdict_schema_registry::compat::Level;
use verdict_schema_registry::store::{ParsedSchema, Record};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(parsed) = ParsedSchema::parse(text)
    {
        let again = ParsedSchema::parse(text).expect("parses twice");
        assert_eq!(parsed.identity, again.identity, "the same text is the same schema");
        let _ = Level::Full.check(&parsed.schema, &[(1, &parsed.schema)]);
    }
    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let (key, value) = data.split_at(split);
    let _ = Record::decode(key, (!value.is_empty()).then_some(value));
});
