//! Pattern-based PII detection and redaction: e-mail addresses, phone numbers,
//! payment card numbers (Luhn-checked) and IBANs (mod-97-checked). Matches are
//! replaced by `[EMAIL]`, `[PHONE]`, `[CARD]`, `[IBAN]`.

use std::collections::BTreeSet;
use std::sync::LazyLock;

use regex::Regex;

#[allow(clippy::unwrap_used)] // constant patterns, checked by the tests
static IBAN: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}").unwrap());
/// No word boundaries: a card number glued to letters (`card:4111…exp`) is still one; where
/// it may end is decided by [`replace_longest_valid`] (not next to another digit).
#[allow(clippy::unwrap_used)]
static CARD: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[0-9](?:[ .-]?[0-9]){12,18}").unwrap());
#[allow(clippy::unwrap_used)]
static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b[a-z0-9._%+-]+@[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,}\b").unwrap()
});
#[allow(clippy::unwrap_used)]
static PHONE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?:\+|\b00|\b0)[0-9](?:[ ()/.-]{0,2}[0-9]){6,14}\b").unwrap());

#[derive(Debug, Clone, PartialEq)]
pub struct Redacted {
    pub text: String,
    /// Kinds found: EMAIL, PHONE, CARD, IBAN.
    pub kinds: Vec<String>,
    pub count: usize,
}

/// Luhn checksum of a digit string.
pub fn luhn_valid(digits: &str) -> bool {
    let mut sum = 0;
    for (i, c) in digits.chars().rev().enumerate() {
        let Some(mut d) = c.to_digit(10) else {
            return false;
        };
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    !digits.is_empty() && sum % 10 == 0
}

/// ISO 13616 check: move the first four characters to the end, letters to
/// numbers (A=10 … Z=35), the whole number mod 97 must be 1. Works on characters, so any
/// input is safe (only ASCII letters and digits can pass).
pub fn iban_valid(iban: &str) -> bool {
    let compact: Vec<char> = iban.chars().filter(|c| !c.is_whitespace()).collect();
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    let (head, tail) = compact.split_at(4);
    let mut rem: u32 = 0;
    for &c in tail.iter().chain(head) {
        let v = match c {
            '0'..='9' => c as u32 - '0' as u32,
            'A'..='Z' => c as u32 - 'A' as u32 + 10,
            'a'..='z' => c as u32 - 'a' as u32 + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

fn replace(
    text: &str,
    re: &Regex,
    label: &str,
    valid: impl Fn(&str) -> bool,
    kinds: &mut BTreeSet<String>,
    count: &mut usize,
) -> String {
    re.replace_all(text, |caps: &regex::Captures<'_>| {
        let m = &caps[0];
        if valid(m) {
            kinds.insert(label.to_string());
            *count += 1;
            format!("[{label}]")
        } else {
            m.to_string()
        }
    })
    .into_owned()
}

/// Like [`replace`], for patterns whose matches may run on past the number (an IBAN followed
/// by a word, a card by more digits): the longest valid prefix of each match that ends where
/// `may_follow` accepts the next character is replaced, and scanning goes on after it.
fn replace_longest_valid(
    text: &str,
    re: &Regex,
    label: &str,
    may_follow: impl Fn(char) -> bool,
    valid: impl Fn(&str) -> bool,
    kinds: &mut BTreeSet<String>,
    count: &mut usize,
) -> String {
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut at = 0;
    while let Some(m) = re.find_at(text, at) {
        let ends_well = |end: usize| {
            text.get(end..)
                .and_then(|r| r.chars().next())
                .is_none_or(&may_follow)
        };
        let starts_well = text
            .get(..m.start())
            .and_then(|before| before.chars().next_back())
            .is_none_or(&may_follow);
        // Longest first: the match's end, then every character boundary inside it.
        let mut ends = std::iter::once(m.end()).chain(
            m.as_str()
                .char_indices()
                .rev()
                .map(|(i, _)| m.start() + i)
                .filter(|&end| end > m.start()),
        );
        let found = if starts_well {
            ends.find(|&end| ends_well(end) && text.get(m.start()..end).is_some_and(&valid))
        } else {
            None
        };
        match found {
            Some(end) => {
                out.push_str(text.get(copied..m.start()).unwrap_or_default());
                out.push_str(&format!("[{label}]"));
                kinds.insert(label.to_string());
                *count += 1;
                copied = end;
                at = end;
            }
            None => at = m.end(),
        }
    }
    out.push_str(text.get(copied..).unwrap_or_default());
    out
}

pub fn redact(text: &str) -> Redacted {
    let mut kinds = BTreeSet::new();
    let mut count = 0;
    let digits = |s: &str| s.chars().filter(char::is_ascii_digit).collect::<String>();
    let t = replace_longest_valid(
        text,
        &IBAN,
        "IBAN",
        |c| !c.is_alphanumeric(),
        iban_valid,
        &mut kinds,
        &mut count,
    );
    let t = replace_longest_valid(
        &t,
        &CARD,
        "CARD",
        |c| !c.is_ascii_digit(),
        |m| luhn_valid(&digits(m)),
        &mut kinds,
        &mut count,
    );
    let t = replace(&t, &EMAIL, "EMAIL", |_| true, &mut kinds, &mut count);
    let t = replace(
        &t,
        &PHONE,
        "PHONE",
        |m| (8..=15).contains(&digits(m).len()),
        &mut kinds,
        &mut count,
    );
    Redacted {
        text: t,
        kinds: kinds.into_iter().collect(),
        count,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums() {
        assert!(luhn_valid("4111111111111111"));
        assert!(!luhn_valid("4111111111111112"));
        assert!(iban_valid("DE89 3704 0044 0532 0130 00"));
        assert!(iban_valid("GB82WEST12345698765432"));
        assert!(!iban_valid("DE89370400440532013001"));
    }

    #[test]
    fn digits_of_other_scripts_are_not_pii_and_do_not_panic() {
        // Devanagari digits once matched `\d` and split a multi-byte character at byte 4.
        for text in [
            "DE\u{966}\u{967}ABCDEFGHIJK",
            "Transfer to DE\u{966}\u{967}ABCDEFGHIJK please",
            "\u{966}\u{967}\u{968}\u{969}\u{96a}\u{96b}\u{96c}\u{96d}\u{96e}\u{96f}\u{966}\u{967}\u{968}",
            "+\u{664}\u{665}\u{666}\u{667}\u{668}\u{669}\u{660}\u{661}",
        ] {
            let r = redact(text);
            assert_eq!(r.count, 0, "{text}");
            assert_eq!(r.text, text);
        }
        assert!(!iban_valid("DE\u{966}\u{967}ABCDEFGHIJKLM"));
    }

    #[test]
    fn redacts_every_kind_and_keeps_lookalikes() {
        let text = "Mail jane.doe@example.com or call +49 30 1234567. Card 4111 1111 1111 1111, \
                    IBAN DE89 3704 0044 0532 0130 00. Order 1234567890123 (not a card), invoice 2024-17.";
        let r = redact(text);
        for secret in [
            "jane.doe@example.com",
            "+49 30 1234567",
            "4111 1111 1111 1111",
            "DE89 3704",
        ] {
            assert!(!r.text.contains(secret), "{secret} left in: {}", r.text);
        }
        assert_eq!(r.kinds, vec!["CARD", "EMAIL", "IBAN", "PHONE"]);
        assert!(
            r.text.contains("[EMAIL]")
                && r.text.contains("[CARD]")
                && r.text.contains("[IBAN]")
                && r.text.contains("[PHONE]")
        );
        assert!(r.text.contains("invoice 2024-17"), "{}", r.text);
        assert_eq!(redact("nothing personal here").count, 0);
    }

    /// Review item 12 of the hardening issue: card numbers with dots or glued to letters, and
    /// IBANs in lower case, went through unredacted.
    #[test]
    fn cards_with_dots_or_glued_to_words_and_lower_case_ibans_are_redacted() {
        for (text, secret, kind) in [
            ("pay 4111.1111.1111.1111 now", "4111.1111.1111.1111", "CARD"),
            ("card:4111111111111111exp 12/29", "4111111111111111", "CARD"),
            ("iban de89 3704 0044 0532 0130 00.", "de89 3704", "IBAN"),
            ("to gb82west12345698765432 please", "gb82west", "IBAN"),
            (
                "IBAN DE89 3704 0044 0532 0130 00 please",
                "DE89 3704",
                "IBAN",
            ),
        ] {
            let r = redact(text);
            assert!(!r.text.contains(secret), "{secret} left in: {}", r.text);
            assert_eq!(r.kinds, vec![kind], "{text} -> {}", r.text);
        }
        let r = redact("to gb82west12345698765432 please");
        assert_eq!(r.text, "to [IBAN] please");
        // Still not PII: a digit run longer than any card, and part of one.
        let long = "order 41111111111111111111111111 shipped";
        assert_eq!(redact(long).count, 0, "{}", redact(long).text);
    }
}
