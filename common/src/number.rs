//! DynamoDB numbers compared as DynamoDB compares them: by value, whatever the sign, the decimals or
//! the exponent, exactly (up to DynamoDB's 38 digits and beyond). The replicator's model of its
//! conditions and the benchmark's stand-in share it.

use std::cmp::Ordering;

/// A parsed decimal number: sign, significant digits (no leading or trailing zeros) and the power of ten
/// of the first digit. Zero has no digits.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Decimal {
    negative: bool,
    digits: Vec<u8>,
    exponent: i64,
}

fn parse_decimal(text: &str) -> Option<Decimal> {
    let text = text.trim();
    let (negative, rest) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let (mantissa, exp) = match rest.find(['e', 'E']) {
        Some(i) => (&rest[..i], rest[i + 1..].parse::<i64>().ok()?),
        None => (rest, 0),
    };
    let (int, frac) = match mantissa.split_once('.') {
        Some((i, f)) => (i, f),
        None => (mantissa, ""),
    };
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    if !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let all: Vec<u8> = int.bytes().chain(frac.bytes()).map(|b| b - b'0').collect();
    let leading = all.iter().take_while(|d| **d == 0).count();
    let digits: Vec<u8> = all[leading..].to_vec();
    let trailing = digits.iter().rev().take_while(|d| **d == 0).count();
    let digits = digits[..digits.len() - trailing].to_vec();
    let exponent = int.len() as i64 - 1 - leading as i64 + exp;
    Some(Decimal {
        negative: negative && !digits.is_empty(),
        digits,
        exponent,
    })
}

/// Compares two DynamoDB numbers; `None` if either is not a number.
pub fn compare_numbers(a: &str, b: &str) -> Option<Ordering> {
    let (a, b) = (parse_decimal(a)?, parse_decimal(b)?);
    let magnitude = |x: &Decimal, y: &Decimal| -> Ordering {
        match (x.digits.is_empty(), y.digits.is_empty()) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Less,
            (false, true) => Ordering::Greater,
            (false, false) => x
                .exponent
                .cmp(&y.exponent)
                .then_with(|| x.digits.cmp(&y.digits)),
        }
    };
    Some(match (a.negative, b.negative) {
        (false, false) => magnitude(&a, &b),
        (true, true) => magnitude(&b, &a),
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
    })
}

/// Whether the text is a number DynamoDB accepts.
pub fn is_number(text: &str) -> bool {
    parse_decimal(text).is_some()
}
