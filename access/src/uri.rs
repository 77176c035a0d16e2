//! Percent-encoding (RFC 3986 §2.1) for the URIs and form bodies the gateway writes: a query
//! value, an `application/x-www-form-urlencoded` value (client credentials), a path segment.
//! Everything but the unreserved characters (`A-Z a-z 0-9 - . _ ~`, §2.3) is encoded, so the
//! result is safe in any of those places.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Every byte but RFC 3986's unreserved characters.
const RESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `s` with everything but unreserved characters percent-encoded (UTF-8 bytes, upper-case hex).
pub fn encode(s: &str) -> String {
    utf8_percent_encode(s, RESERVED).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unreserved_characters_stay() {
        assert_eq!(encode("a b/c?d=é"), "a%20b%2Fc%3Fd%3D%C3%A9");
        assert_eq!(encode("AZaz09-._~"), "AZaz09-._~");
        assert_eq!(encode("a b/ü"), "a%20b%2F%C3%BC");
        assert_eq!(encode("+&=%#:"), "%2B%26%3D%25%23%3A");
    }
}
