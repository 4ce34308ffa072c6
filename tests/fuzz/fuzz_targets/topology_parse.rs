//! Topology parsing on any text: every problem is reported with a line inside the text,
//! nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Err(issues) = verdict_runtime::topology::Topology::parse(text, std::path::Path::new("/nonexistent")) {
        let lines = text.lines().count().max(1);
        for issue in issues {
            assert!(issue.line >= 1 && issue.line <= lines + 1, "{issue} outside {lines} lines");
        }
    }
});
