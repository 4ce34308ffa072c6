//! Offsets finished beyond a partition's commit position, carried in the metadata of the
//! offset commit (as Confluent's Parallel Consumer carries them).
//!
//! With key-ordered parallelism, records after the first unfinished one of a partition may be
//! finished already. Under `engine.guarantee = "exactly_once"` their outputs are committed in
//! the same transaction as the offsets, so after a restart or a rebalance they must not run
//! again: the commit names them, and whoever is assigned the partition next skips them.
//!
//! Format: empty for none; else `v1:` and the URL-safe base64 (no padding) of a bitset whose
//! bit i (least significant first in each byte) is offset `position + 1 + i` (the record at
//! the position itself is never finished). Kafka keeps at most 4096 characters of metadata
//! by default (`offset.metadata.max.bytes`), so an encoding longer than [`MAX_CHARS`] is not
//! made and the engine commits later, when fewer are outstanding.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The longest metadata written.
pub const MAX_CHARS: usize = 3_000;
const PREFIX: &str = "v1:";

/// The metadata for `done` (offsets finished beyond `position`); `None` when too long.
pub fn encode(position: i64, done: &[i64]) -> Option<String> {
    let Some(last) = done.iter().copied().filter(|o| *o > position).max() else {
        return Some(String::new());
    };
    let span = usize::try_from(last - position).ok()?;
    if span.div_ceil(8) * 4 / 3 + PREFIX.len() > MAX_CHARS {
        return None;
    }
    let mut bits = vec![0u8; span.div_ceil(8)];
    for o in done.iter().filter(|o| **o > position) {
        let i = usize::try_from(o - position - 1).ok()?;
        if let Some(byte) = bits.get_mut(i / 8) {
            *byte |= 1 << (i % 8);
        }
    }
    let text = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bits));
    (text.len() <= MAX_CHARS).then_some(text)
}

/// The offsets `metadata` says are finished beyond `position`. Metadata that is not ours
/// (another tool committed the group) is an error naming it.
pub fn decode(position: i64, metadata: &str) -> Result<Vec<i64>, String> {
    if metadata.is_empty() {
        return Ok(Vec::new());
    }
    let body = metadata
        .strip_prefix(PREFIX)
        .ok_or_else(|| format!("offset metadata `{metadata:.40}` is not verdict's (v1:)"))?;
    let bits = URL_SAFE_NO_PAD
        .decode(body)
        .map_err(|e| format!("offset metadata `{metadata:.40}`: {e}"))?;
    Ok(bits
        .iter()
        .enumerate()
        .flat_map(|(i, byte)| {
            (0..8)
                .filter(move |b| byte & (1 << b) != 0)
                .map(move |b| position + 1 + (i * 8 + b) as i64)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_offsets_round_trip() {
        assert_eq!(encode(10, &[]), Some(String::new()));
        assert_eq!(decode(10, ""), Ok(vec![]));
        let done = vec![11, 12, 19, 20, 300];
        let text = encode(10, &done).expect("short");
        assert!(text.starts_with("v1:"), "{text}");
        assert_eq!(decode(10, &text), Ok(done));
        assert_eq!(
            decode(10, &encode(10, &[9, 10, 12]).expect("short")),
            Ok(vec![12])
        );
    }

    #[test]
    fn too_many_outstanding_is_not_encoded_and_foreign_metadata_is_named() {
        assert_eq!(encode(0, &[1, 100_000]), None);
        assert!(encode(0, &[1, 10_000]).is_some_and(|t| t.len() <= MAX_CHARS));
        let err = decode(0, "from-another-tool").expect_err("not ours");
        assert!(err.contains("from-another-tool"), "{err}");
    }
}
