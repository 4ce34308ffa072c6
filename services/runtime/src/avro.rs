//! Avro helpers shared by producers and tools.

use apache_avro::Schema;
use apache_avro::types::Value;
use serde_json::Value as Json;

/// Converts a JSON document to an Avro value of `schema` (records from objects,
/// unions and logical types by Avro's schema resolution rules).
///
/// `apache_avro::to_value` is not used for this: it serialises JSON's unsigned
/// integers as 8-byte `Fixed`, which no `int`/`long` field accepts.
pub fn from_json(json: &Json, schema: &Schema) -> Result<Value, apache_avro::Error> {
    untyped(json).resolve(schema)
}

/// A JSON document as an Avro value without a schema (objects as maps); resolve
/// it against a schema to get records, enums, unions and logical types.
pub fn untyped(json: &Json) -> Value {
    match json {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Boolean(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::Long(i),
            None => Value::Double(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Value::String(s.clone()),
        Json::Array(items) => Value::Array(items.iter().map(untyped).collect()),
        Json::Object(map) => Value::Map(map.iter().map(|(k, v)| (k.clone(), untyped(v))).collect()),
    }
}

/// An Avro datum (no framing) written with `schema`, as JSON: how tools and tests read what
/// the engine's typed encoder wrote, with apache-avro.
pub fn datum_to_json(schema: &Schema, datum: &[u8]) -> Result<Json, String> {
    let value = apache_avro::reader::datum::GenericDatumReader::builder(schema)
        .build()
        .and_then(|r| r.read_value(&mut &datum[..]))
        .map_err(|e| e.to_string())?;
    Json::try_from(value).map_err(|e| e.to_string())
}

/// Checks a JSON object against a record schema field by field, so that the error names the
/// field: a missing field without a default, a field whose value does not fit its type, or a
/// field the schema does not have.
pub fn check_fields(schema: &apache_avro::Schema, json: &Json) -> Result<(), String> {
    let apache_avro::Schema::Record(record) = schema else {
        return untyped(json).resolve(schema).map(|_| ()).map_err(|_| {
            format!(
                "expected {}, got {}",
                describe_schema(schema),
                describe_json(json)
            )
        });
    };
    let Json::Object(map) = json else {
        return Err(format!("expected a JSON object for record {}", record.name));
    };
    for field in &record.fields {
        match map.get(&field.name) {
            None if field.default.is_none() => {
                return Err(format!(
                    "field `{}`: missing (it has no default)",
                    field.name
                ));
            }
            None => {}
            Some(v) => {
                check_fields(&field.schema, v)
                    .map_err(|e| format!("field `{}`: {e}", field.name))?;
                check_length(field, v)?;
            }
        }
    }
    if let Some(extra) = map.keys().find(|k| !record.lookup.contains_key(*k)) {
        return Err(format!(
            "field `{extra}`: not in schema {} (known: {})",
            record.name,
            record
                .fields
                .iter()
                .map(|f| f.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(())
}

/// What a schema takes, in a JSON writer's terms (for error messages).
fn describe_schema(schema: &apache_avro::Schema) -> String {
    use apache_avro::Schema as S;
    match schema {
        S::Null => "null".into(),
        S::Boolean => "true or false".into(),
        S::Int | S::Long => "a whole number".into(),
        S::Float | S::Double => "a number".into(),
        S::String | S::Uuid(_) => "a string".into(),
        S::Bytes | S::Fixed(_) => "bytes".into(),
        S::TimestampMillis | S::TimestampMicros | S::LocalTimestampMillis => {
            "a time (a whole number of ms since the epoch)".into()
        }
        S::Date => "a date (a whole number of days since the epoch)".into(),
        S::Enum(e) => format!("one of {}", e.symbols.join(", ")),
        S::Union(u) => u
            .variants()
            .iter()
            .map(describe_schema)
            .collect::<Vec<_>>()
            .join(" or "),
        S::Array(_) => "a list".into(),
        S::Map(_) | S::Record(_) => "an object".into(),
        S::Ref { name } => format!("a {}", name.name()),
        other => format!("{other:?}").chars().take(40).collect(),
    }
}

/// A JSON value as an error message shows it: its kind and (shortened) text.
fn describe_json(json: &Json) -> String {
    let text: String = json.to_string().chars().take(40).collect();
    match json {
        Json::Null => "null".into(),
        Json::Bool(_) => text,
        Json::Number(_) => format!("the number {text}"),
        Json::String(_) => format!("the string {text}"),
        Json::Array(_) => "a list".into(),
        Json::Object(_) => "an object".into(),
    }
}

/// A string field's `maxLength` (a schema attribute of ours, in characters), if it has one.
fn check_length(field: &apache_avro::schema::RecordField, value: &Json) -> Result<(), String> {
    let (Some(max), Json::String(text)) = (
        field
            .custom_attributes
            .get("maxLength")
            .and_then(Json::as_u64),
        value,
    ) else {
        return Ok(());
    };
    let chars = text.chars().count();
    if u64::try_from(chars).unwrap_or(u64::MAX) > max {
        return Err(format!(
            "field `{}`: longer than {max} characters ({chars})",
            field.name
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn objects_become_records_with_defaults_and_unions() {
        let schema = Schema::parse_str(
            r#"{"type":"record","name":"R","fields":[
                {"name":"id","type":{"type":"string","logicalType":"uuid"}},
                {"name":"at","type":{"type":"long","logicalType":"timestamp-millis"}},
                {"name":"n","type":"int"},
                {"name":"x","type":"double"},
                {"name":"kind","type":{"type":"enum","name":"K","symbols":["A","B"]}},
                {"name":"opt","type":["null","int"],"default":null}
            ]}"#,
        )
        .expect("schema");
        let v = from_json(
            &json!({"id":"6f1c8f7e-6c53-4a51-9a8e-1f3b2a9c0d11","at":1700000000000_i64,"n":3,"x":2,"kind":"B"}),
            &schema,
        )
        .expect("resolves");
        let Value::Record(fields) = v else {
            panic!("record expected")
        };
        assert_eq!(fields[1].1, Value::TimestampMillis(1_700_000_000_000));
        assert_eq!(fields[2].1, Value::Int(3));
        assert_eq!(fields[3].1, Value::Double(2.0));
        assert_eq!(fields[4].1, Value::Enum(1, "B".into()));
        assert_eq!(fields[5].1, Value::Union(0, Box::new(Value::Null)));
        assert!(
            from_json(&json!({"id":"x"}), &schema).is_err(),
            "missing required fields"
        );
    }

    #[test]
    fn strings_are_bounded_by_their_max_length_in_characters() {
        let schema = Schema::parse_str(
            r#"{"type":"record","name":"R","fields":[
                {"name":"id","type":"string","maxLength":3},
                {"name":"opt","type":["null","string"],"maxLength":2,"default":null}
            ]}"#,
        )
        .expect("schema");
        assert!(
            check_fields(&schema, &json!({"id": "äöü"})).is_ok(),
            "characters, not bytes"
        );
        assert_eq!(
            check_fields(&schema, &json!({"id": "abcd"})),
            Err("field `id`: longer than 3 characters (4)".into())
        );
        assert!(check_fields(&schema, &json!({"id": "a", "opt": null})).is_ok());
        assert!(check_fields(&schema, &json!({"id": "a", "opt": "abc"})).is_err());
    }

    #[test]
    fn field_checks_name_the_field() {
        let schema = Schema::parse_str(
            r#"{"type":"record","name":"T","fields":[
                {"name":"id","type":"string"},
                {"name":"amount","type":"double"},
                {"name":"note","type":["null","string"],"default":null}]}"#,
        )
        .expect("schema");
        assert_eq!(
            check_fields(&schema, &json!({"id": "a", "amount": 1.5})),
            Ok(())
        );
        let missing = check_fields(&schema, &json!({"amount": 1.5})).expect_err("fails");
        assert!(missing.starts_with("field `id`: missing"), "{missing}");
        let wrong = check_fields(&schema, &json!({"id": "a", "amount": "x"})).expect_err("fails");
        assert_eq!(
            wrong,
            "field `amount`: expected a number, got the string \"x\""
        );
        let wrong =
            check_fields(&schema, &json!({"id": "a", "amount": 1, "note": 5})).expect_err("fails");
        assert_eq!(
            wrong,
            "field `note`: expected null or a string, got the number 5"
        );
        let extra =
            check_fields(&schema, &json!({"id": "a", "amount": 1, "x": 1})).expect_err("fails");
        assert!(extra.starts_with("field `x`: not in schema"), "{extra}");
    }
}
