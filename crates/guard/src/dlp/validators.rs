//! Structure and checksum validators for PII: payment cards (Luhn plus issuer
//! ranges and lengths), IBANs (ISO 7064 mod-97 plus the ISO 13616 registry
//! length per country), US social security numbers and email addresses.
//!
//! The scanner finds candidates with loose patterns and keeps only those these
//! functions accept, so a number is reported as a card only when it could be one.

/// A payment card network, recognised from the card number's issuer prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CardBrand {
    /// Visa: prefix 4, 13, 16 or 19 digits.
    Visa,
    /// Mastercard: prefixes 51–55 and 2221–2720, 16 digits.
    Mastercard,
    /// American Express: prefixes 34 and 37, 15 digits.
    Amex,
    /// Discover: 6011, 622126–622925, 644–649 and 65, 16–19 digits.
    Discover,
    /// JCB: 3528–3589, 16–19 digits.
    Jcb,
    /// Diners Club: 300–305, 36, 38 and 39, 14–19 digits.
    Diners,
}

/// Returns true when the ASCII digits pass the Luhn (mod 10) check.
///
/// Any byte that is not an ASCII digit makes the check fail, as does an empty
/// input.
pub fn luhn(digits: &[u8]) -> bool {
    if digits.is_empty() {
        return false;
    }
    let mut sum = 0u32;
    for (i, &b) in digits.iter().rev().enumerate() {
        if !b.is_ascii_digit() {
            return false;
        }
        let mut d = u32::from(b - b'0');
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    sum.is_multiple_of(10)
}

/// The leading `n` digits of `digits` as a number (`digits` must be ASCII digits).
fn prefix(digits: &[u8], n: usize) -> u32 {
    digits
        .iter()
        .take(n)
        .fold(0u32, |acc, &b| acc * 10 + u32::from(b.wrapping_sub(b'0')))
}

/// Returns the card brand whose issuer range and length rules `digits` matches.
///
/// `digits` holds only ASCII digits (separators already removed). The Luhn
/// check is not part of this function; see [`is_valid_card`].
pub fn card_brand(digits: &[u8]) -> Option<CardBrand> {
    if digits.len() < 13 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let len = digits.len();
    let p1 = prefix(digits, 1);
    let p2 = prefix(digits, 2);
    let p3 = prefix(digits, 3);
    let p4 = prefix(digits, 4);
    let p6 = prefix(digits, 6);
    if p1 == 4 && matches!(len, 13 | 16 | 19) {
        return Some(CardBrand::Visa);
    }
    if ((51..=55).contains(&p2) || (2221..=2720).contains(&p4)) && len == 16 {
        return Some(CardBrand::Mastercard);
    }
    if (p2 == 34 || p2 == 37) && len == 15 {
        return Some(CardBrand::Amex);
    }
    if (p4 == 6011 || (622_126..=622_925).contains(&p6) || (644..=649).contains(&p3) || p2 == 65)
        && (16..=19).contains(&len)
    {
        return Some(CardBrand::Discover);
    }
    if (3528..=3589).contains(&p4) && (16..=19).contains(&len) {
        return Some(CardBrand::Jcb);
    }
    if ((300..=305).contains(&p3) || p2 == 36 || p2 == 38 || p2 == 39) && (14..=19).contains(&len) {
        return Some(CardBrand::Diners);
    }
    None
}

/// Returns true when `s` is a plausible payment card number: digits optionally
/// grouped by single spaces or dashes, a known issuer range and length, and a
/// valid Luhn check digit.
pub fn is_valid_card(s: &str) -> bool {
    let mut digits = Vec::with_capacity(19);
    for b in s.bytes() {
        match b {
            b'0'..=b'9' => digits.push(b),
            b' ' | b'-' => {}
            _ => return false,
        }
    }
    card_brand(&digits).is_some() && luhn(&digits)
}

/// IBAN lengths from the ISO 13616 (SWIFT) IBAN registry, by country code:
/// the 89 countries of Release 100 (January 2025), each length checked
/// against the registry's "IBAN length" row. Territories that use another
/// country's format (AX, GF, IM, …) are not separate entries in the registry.
const IBAN_LENGTHS: &[(&str, usize)] = &[
    ("AD", 24),
    ("AE", 23),
    ("AL", 28),
    ("AT", 20),
    ("AZ", 28),
    ("BA", 20),
    ("BE", 16),
    ("BG", 22),
    ("BH", 22),
    ("BI", 27),
    ("BR", 29),
    ("BY", 28),
    ("CH", 21),
    ("CR", 22),
    ("CY", 28),
    ("CZ", 24),
    ("DE", 22),
    ("DJ", 27),
    ("DK", 18),
    ("DO", 28),
    ("EE", 20),
    ("EG", 29),
    ("ES", 24),
    ("FI", 18),
    ("FK", 18),
    ("FO", 18),
    ("FR", 27),
    ("GB", 22),
    ("GE", 22),
    ("GI", 23),
    ("GL", 18),
    ("GR", 27),
    ("GT", 28),
    ("HN", 28),
    ("HR", 21),
    ("HU", 28),
    ("IE", 22),
    ("IL", 23),
    ("IQ", 23),
    ("IS", 26),
    ("IT", 27),
    ("JO", 30),
    ("KW", 30),
    ("KZ", 20),
    ("LB", 28),
    ("LC", 32),
    ("LI", 21),
    ("LT", 20),
    ("LU", 20),
    ("LV", 21),
    ("LY", 25),
    ("MC", 27),
    ("MD", 24),
    ("ME", 22),
    ("MK", 19),
    ("MN", 20),
    ("MR", 27),
    ("MT", 31),
    ("MU", 30),
    ("NI", 28),
    ("NL", 18),
    ("NO", 15),
    ("OM", 23),
    ("PK", 24),
    ("PL", 28),
    ("PS", 29),
    ("PT", 25),
    ("QA", 29),
    ("RO", 24),
    ("RS", 22),
    ("RU", 33),
    ("SA", 24),
    ("SC", 31),
    ("SD", 18),
    ("SE", 24),
    ("SI", 19),
    ("SK", 24),
    ("SM", 27),
    ("SO", 23),
    ("ST", 25),
    ("SV", 28),
    ("TL", 23),
    ("TN", 24),
    ("TR", 26),
    ("UA", 29),
    ("VA", 22),
    ("VG", 24),
    ("XK", 20),
    ("YE", 30),
];

/// The registry length of IBANs for a two-letter country code, if it has one.
pub fn iban_length(country: &str) -> Option<usize> {
    IBAN_LENGTHS
        .binary_search_by(|(c, _)| (*c).cmp(country))
        .ok()
        .and_then(|i| IBAN_LENGTHS.get(i))
        .map(|&(_, len)| len)
}

/// Returns true when `s` is a valid IBAN in electronic form or in groups
/// separated by single spaces: upper-case country code with a registry length,
/// two check digits, alphanumeric BBAN, and remainder 1 under ISO 7064 mod 97.
pub fn is_valid_iban(s: &str) -> bool {
    let compact: Vec<u8> = s.bytes().filter(|&b| b != b' ').collect();
    if compact.len() < 5 || s.contains("  ") {
        return false;
    }
    let Ok(country) = std::str::from_utf8(&compact[..2]) else {
        return false;
    };
    if !country.bytes().all(|b| b.is_ascii_uppercase())
        || !compact[2..4].iter().all(u8::is_ascii_digit)
        || !compact[4..]
            .iter()
            .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
    {
        return false;
    }
    if iban_length(country) != Some(compact.len()) {
        return false;
    }
    iban_mod97(&compact) == 1
}

/// The ISO 7064 mod-97 remainder of an IBAN: the first four characters move to
/// the end and letters count as 10–35. Input is upper-case alphanumeric ASCII.
fn iban_mod97(iban: &[u8]) -> u32 {
    let (head, tail) = iban.split_at(4);
    let mut rem = 0u32;
    for &b in tail.iter().chain(head) {
        if b.is_ascii_digit() {
            rem = (rem * 10 + u32::from(b - b'0')) % 97;
        } else {
            let v = u32::from(b - b'A') + 10;
            rem = (rem * 100 + v) % 97;
        }
    }
    rem
}

/// Returns true when `s` is a US social security number that the SSA could
/// have issued: `AAA-GG-SSSS` or nine bare digits, with an area other than 000,
/// 666 and 900–999, a group other than 00 and a serial other than 0000.
pub fn is_valid_ssn(s: &str) -> bool {
    let b = s.as_bytes();
    let digits: Vec<u8> = match b.len() {
        11 if b[3] == b'-' && b[6] == b'-' => [&b[..3], &b[4..6], &b[7..]].concat(),
        9 => b.to_vec(),
        _ => return false,
    };
    if !digits.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let area = prefix(&digits, 3);
    let group = prefix(&digits[3..], 2);
    let serial = prefix(&digits[5..], 4);
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
}

/// Returns true when `s` has the shape of an email address: a dot-atom local
/// part of at most 64 characters, `@`, and a domain of at least two labels
/// (letters, digits, inner hyphens, at most 63 characters each) ending in an
/// alphabetic top-level label; at most 254 characters in all.
pub fn is_valid_email(s: &str) -> bool {
    if s.len() > 254 {
        return false;
    }
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && local.split('.').all(|atom| {
            !atom.is_empty()
                && atom
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+/=?^_`{|}~-".contains(&b))
        });
    if !local_ok {
        return false;
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2 {
        return false;
    }
    let labels_ok = labels.iter().all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    let tld_ok = labels
        .last()
        .is_some_and(|t| t.len() >= 2 && t.bytes().all(|b| b.is_ascii_alphabetic()));
    labels_ok && tld_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Which validator a test case exercises.
    #[derive(Clone, Copy, Debug)]
    enum V {
        Card,
        Iban,
        Ssn,
        Email,
    }

    fn check(v: V, input: &str, expect: bool) {
        let got = match v {
            V::Card => is_valid_card(input),
            V::Iban => is_valid_iban(input),
            V::Ssn => is_valid_ssn(input),
            V::Email => is_valid_email(input),
        };
        assert_eq!(got, expect, "{v:?} `{input}`");
    }

    #[test]
    fn cards() {
        // Published test numbers (Stripe, PayPal/Braintree docs).
        for n in [
            "4242424242424242",
            "4242 4242 4242 4242",
            "4000-0566-5566-5556",
            "4111111111111111",
            "4012888888881881",
            "4222222222222",
            "5555555555554444",
            "2223003122003222",
            "5200828282828210",
            "5105105105105100",
            "378282246310005",
            "371449635398431",
            "6011111111111117",
            "6011000990139424",
            "3530111333300000",
            "3566002020360505",
            "36227206271667",
            "30569309025904",
            "38520000023237",
        ] {
            check(V::Card, n, true);
        }
        for n in [
            "4242424242424241",    // Luhn fails
            "5555555555554440",    // Luhn fails
            "1234567812345670",    // Luhn ok, no issuer
            "3782822463100050",    // Amex prefix, 16 digits
            "2721000000000004",    // just past the Mastercard 2-series
            "424242424242424",     // 15-digit Visa
            "4242_4242_4242_4242", // not a separator we accept
            "0000000000000000",    // Luhn ok, no issuer
            "",
        ] {
            check(V::Card, n, false);
        }
    }

    #[test]
    fn card_brands() {
        let cases: &[(&str, Option<CardBrand>)] = &[
            ("4242424242424242", Some(CardBrand::Visa)),
            ("2720990000000000", Some(CardBrand::Mastercard)),
            ("2221000000000000", Some(CardBrand::Mastercard)),
            ("5100000000000000", Some(CardBrand::Mastercard)),
            ("340000000000000", Some(CardBrand::Amex)),
            ("6221260000000000", Some(CardBrand::Discover)),
            ("6440000000000000", Some(CardBrand::Discover)),
            ("3528000000000000", Some(CardBrand::Jcb)),
            ("30000000000000", Some(CardBrand::Diners)),
            ("2220990000000000", None),
            ("5600000000000000", None),
        ];
        for &(n, want) in cases {
            assert_eq!(card_brand(n.as_bytes()), want, "{n}");
        }
    }

    #[test]
    fn ibans() {
        // Examples from the SWIFT IBAN registry and the ECBS list.
        for n in [
            "GB82WEST12345698765432",
            "GB82 WEST 1234 5698 7654 32",
            "DE89370400440532013000",
            "DE89 3704 0044 0532 0130 00",
            "FR1420041010050500013M02606",
            "NL91ABNA0417164300",
            "BE68539007547034",
            "CH9300762011623852957",
            "NO9386011117947",
            "ES9121000418450200051332",
            "IT60X0542811101000000123456",
            "AT611904300234573201",
            "MT84MALT011000012345MTLCAST001S",
            "LC55HEMM000100010012001200023015",
        ] {
            check(V::Iban, n, true);
        }
        for n in [
            "GB82WEST12345698765433", // check digits wrong
            "GB82WEST1234569876543",  // one character short for GB
            "DE89370400440532013001", // mod 97 fails
            "XX89370400440532013000", // not a registry country
            "gb82west12345698765432", // lower case
            "GB82  WEST 1234 5698 7654 32",
            "US12345678901234567890",
            "",
        ] {
            check(V::Iban, n, false);
        }
    }

    #[test]
    fn iban_table_is_sorted_and_large() {
        assert!(IBAN_LENGTHS.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(IBAN_LENGTHS.len() >= 80);
        assert_eq!(iban_length("DE"), Some(22));
        assert_eq!(iban_length("US"), None);
    }

    #[test]
    fn ssns() {
        for n in ["123-45-6789", "078-05-1120", "899-99-9999", "123456789"] {
            check(V::Ssn, n, true);
        }
        for n in [
            "000-12-3456",
            "666-12-3456",
            "900-12-3456",
            "999-12-3456",
            "123-00-4567",
            "123-45-0000",
            "123-456-789",
            "12-345-6789",
            "abc-de-fghi",
            "",
        ] {
            check(V::Ssn, n, false);
        }
    }

    #[test]
    fn emails() {
        for e in [
            "alice@example.com",
            "first.last+tag@sub.example.co.uk",
            "o'brien@example.ie",
            "x@a-b.io",
        ] {
            check(V::Email, e, true);
        }
        for e in [
            "alice@localhost",
            "alice.@example.com",
            ".alice@example.com",
            "al..ice@example.com",
            "alice@-example.com",
            "alice@example.c",
            "alice@example.123",
            "@example.com",
            "alice@@example.com",
            "alice example@example.com",
            "",
        ] {
            check(V::Email, e, false);
        }
    }

    #[test]
    fn registry_examples_validate() {
        // Electronic-format examples of SWIFT's IBAN registry, Release 100,
        // including the countries added since 2021.
        for iban in [
            "AD1200012030200359100100",
            "BI4210000100010000332045181",
            "BR1800360305000010009795493C1",
            "DJ2100010000000154000100186",
            "FK88SC123456789012",
            "HN88CABF00000000000250005469",
            "LC55HEMM000100010012001200023015",
            "LY83002048000020100120361",
            "MN121234123456789123",
            "MT84MALT011000012345MTLCAST001S",
            "MU17BOMM0101101030300200000MUR",
            "NI45BAPR00000013000003558124",
            "NO9386011117947",
            "SC18SSCB11010000000000001497USD",
        ] {
            assert!(is_valid_iban(iban), "{iban}");
            assert_eq!(iban_length(&iban[..2]), Some(iban.len()), "{iban}");
        }
        // One character short, or a country outside the registry.
        assert!(!is_valid_iban("FK88SC12345678901"));
        assert!(!is_valid_iban("US12345678901234567890"));
    }
}
