//! The `retry_on` conditions: Envoy's words (router docs "x-envoy-retry-on",
//! "x-envoy-retry-grpc-on"; retry_state_impl.cc `parseRetryOn`/`parseRetryGrpcOn`)
//! as a bit set, strict parsing for config and lenient parsing for request
//! headers. What each condition retries is in `retry`.

use std::{fmt, ops::BitOr, str::FromStr};

/// The set of `retry_on` conditions (Envoy's `RetryPolicy::RETRY_ON_*` bits).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct RetryOn(u32);

impl RetryOn {
    pub const NONE: RetryOn = RetryOn(0);
    pub const FIVE_XX: RetryOn = RetryOn(1);
    pub const GATEWAY_ERROR: RetryOn = RetryOn(1 << 1);
    pub const CONNECT_FAILURE: RetryOn = RetryOn(1 << 2);
    pub const RETRIABLE_4XX: RetryOn = RetryOn(1 << 3);
    pub const REFUSED_STREAM: RetryOn = RetryOn(1 << 4);
    pub const RETRIABLE_STATUS_CODES: RetryOn = RetryOn(1 << 5);
    pub const RETRIABLE_HEADERS: RetryOn = RetryOn(1 << 6);
    pub const RESET: RetryOn = RetryOn(1 << 7);
    pub const RESET_BEFORE_REQUEST: RetryOn = RetryOn(1 << 8);
    pub const ENVOY_RATELIMITED: RetryOn = RetryOn(1 << 9);
    /// Parsed from request headers only; `parse` rejects it (no HTTP/3 upstreams).
    pub const HTTP3_POST_CONNECT_FAILURE: RetryOn = RetryOn(1 << 10);
    pub const GRPC_CANCELLED: RetryOn = RetryOn(1 << 11);
    pub const GRPC_DEADLINE_EXCEEDED: RetryOn = RetryOn(1 << 12);
    pub const GRPC_INTERNAL: RetryOn = RetryOn(1 << 13);
    pub const GRPC_RESOURCE_EXHAUSTED: RetryOn = RetryOn(1 << 14);
    pub const GRPC_UNAVAILABLE: RetryOn = RetryOn(1 << 15);

    pub(super) const ANY_GRPC: RetryOn = RetryOn(0b11111 << 11);

    pub const fn bits(self) -> u32 {
        self.0
    }
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
    /// Whether every condition in `other` is set.
    pub const fn contains(self, other: RetryOn) -> bool {
        self.0 & other.0 == other.0
    }
    /// Whether any condition in `other` is set.
    pub const fn intersects(self, other: RetryOn) -> bool {
        self.0 & other.0 != 0
    }

    /// `x-envoy-retry-on` (HTTP words) or `x-envoy-retry-grpc-on` (gRPC words)
    /// as Envoy reads them: unknown words are ignored, never an error.
    pub fn from_request_header(value: &str, grpc: bool) -> RetryOn {
        let mut on = RetryOn::NONE;
        for token in tokens(value) {
            if let Some(&(_, bit, is_grpc)) = WORDS.iter().find(|(w, _, _)| *w == token) {
                if is_grpc == grpc {
                    on = on | bit;
                }
            }
        }
        on
    }
}

impl BitOr for RetryOn {
    type Output = RetryOn;
    fn bitor(self, rhs: RetryOn) -> RetryOn {
        RetryOn(self.0 | rhs.0)
    }
}

/// Every word Envoy knows, its bit, and whether it is a gRPC word.
const WORDS: [(&str, RetryOn, bool); 16] = [
    ("5xx", RetryOn::FIVE_XX, false),
    ("gateway-error", RetryOn::GATEWAY_ERROR, false),
    ("connect-failure", RetryOn::CONNECT_FAILURE, false),
    ("envoy-ratelimited", RetryOn::ENVOY_RATELIMITED, false),
    ("retriable-4xx", RetryOn::RETRIABLE_4XX, false),
    ("refused-stream", RetryOn::REFUSED_STREAM, false),
    ("retriable-status-codes", RetryOn::RETRIABLE_STATUS_CODES, false),
    ("retriable-headers", RetryOn::RETRIABLE_HEADERS, false),
    ("reset", RetryOn::RESET, false),
    ("reset-before-request", RetryOn::RESET_BEFORE_REQUEST, false),
    ("http3-post-connect-failure", RetryOn::HTTP3_POST_CONNECT_FAILURE, false),
    ("cancelled", RetryOn::GRPC_CANCELLED, true),
    ("deadline-exceeded", RetryOn::GRPC_DEADLINE_EXCEEDED, true),
    ("internal", RetryOn::GRPC_INTERNAL, true),
    ("resource-exhausted", RetryOn::GRPC_RESOURCE_EXHAUSTED, true),
    ("unavailable", RetryOn::GRPC_UNAVAILABLE, true),
];

/// Envoy's `StringUtil::splitToken(s, ",", keep_empty=false, trim=true)`.
pub(super) fn tokens(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|t| !t.is_empty())
}

/// Parses a route's `retry_on` string. Like Envoy's `RetryPolicyImpl`, one
/// string takes both the HTTP and the gRPC words, comma separated with spaces
/// trimmed and empty items skipped. Unlike Envoy, which silently drops words
/// it does not know, an unknown word is an error (remora NACKs rather than
/// ignores), and so is `http3-post-connect-failure`.
pub fn parse(s: &str) -> Result<RetryOn, String> {
    let mut on = RetryOn::NONE;
    for token in tokens(s) {
        match WORDS.iter().find(|(w, _, _)| *w == token) {
            Some((_, RetryOn::HTTP3_POST_CONNECT_FAILURE, _)) => {
                return Err(format!(
                    "retry_on value \"{token}\" is not supported: remora has no HTTP/3 upstreams"
                ))
            }
            Some((_, bit, _)) => on = on | *bit,
            None => return Err(format!("unknown retry_on value \"{token}\"")),
        }
    }
    Ok(on)
}

impl FromStr for RetryOn {
    type Err = String;
    fn from_str(s: &str) -> Result<RetryOn, String> {
        parse(s)
    }
}

impl fmt::Display for RetryOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (word, _, _) in WORDS.iter().filter(|(_, bit, _)| self.contains(*bit)) {
            f.write_str(if first { "" } else { "," })?;
            f.write_str(word)?;
            first = false;
        }
        Ok(())
    }
}

impl fmt::Debug for RetryOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RetryOn({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Envoy's parseRetryOn/parseRetryGrpcOn: every word has its own bit, and a
    // route's retry_on takes both lists.
    #[test]
    fn every_word_parses_to_its_bit() {
        let table = [
            ("5xx", RetryOn::FIVE_XX),
            ("gateway-error", RetryOn::GATEWAY_ERROR),
            ("reset", RetryOn::RESET),
            ("reset-before-request", RetryOn::RESET_BEFORE_REQUEST),
            ("connect-failure", RetryOn::CONNECT_FAILURE),
            ("envoy-ratelimited", RetryOn::ENVOY_RATELIMITED),
            ("retriable-4xx", RetryOn::RETRIABLE_4XX),
            ("refused-stream", RetryOn::REFUSED_STREAM),
            ("retriable-status-codes", RetryOn::RETRIABLE_STATUS_CODES),
            ("retriable-headers", RetryOn::RETRIABLE_HEADERS),
            ("cancelled", RetryOn::GRPC_CANCELLED),
            ("deadline-exceeded", RetryOn::GRPC_DEADLINE_EXCEEDED),
            ("internal", RetryOn::GRPC_INTERNAL),
            ("resource-exhausted", RetryOn::GRPC_RESOURCE_EXHAUSTED),
            ("unavailable", RetryOn::GRPC_UNAVAILABLE),
        ];
        let mut all = RetryOn::NONE;
        for (word, bit) in table {
            assert_eq!(parse(word), Ok(bit), "{word}");
            assert_eq!(bit.bits().count_ones(), 1);
            assert!(!all.intersects(bit), "{word} shares a bit");
            all = all | bit;
        }
        assert_eq!(all.bits().count_ones(), 15);
    }

    // Envoy splits on ',' with whitespace trimmed and empty items dropped.
    #[test]
    fn list_trims_and_skips_empty_items() {
        assert_eq!(
            parse(" 5xx , connect-failure,,unavailable ,"),
            Ok(RetryOn::FIVE_XX | RetryOn::CONNECT_FAILURE | RetryOn::GRPC_UNAVAILABLE)
        );
        assert_eq!(parse(""), Ok(RetryOn::NONE));
        assert_eq!("reset".parse::<RetryOn>(), Ok(RetryOn::RESET));
    }

    // Envoy drops unknown words silently; remora NACKs with the word named.
    #[test]
    fn unknown_word_is_an_error() {
        assert_eq!(parse("5xx,5xxx"), Err("unknown retry_on value \"5xxx\"".to_string()));
        assert_eq!(parse("5XX"), Err("unknown retry_on value \"5XX\"".to_string()));
    }

    // Envoy applies http3-post-connect-failure only to HTTP/3 upstreams, which
    // remora has none of: refused rather than accepted as a no-op.
    #[test]
    fn http3_post_connect_failure_is_rejected() {
        let err = parse("5xx,http3-post-connect-failure").unwrap_err();
        assert!(err.contains("\"http3-post-connect-failure\" is not supported"), "{err}");
    }

    #[test]
    fn display_lists_words() {
        let on = parse("unavailable,5xx,reset").unwrap();
        assert_eq!(on.to_string(), "5xx,reset,unavailable");
        assert_eq!(parse(&on.to_string()), Ok(on));
        assert_eq!(format!("{:?}", RetryOn::NONE), "RetryOn()");
    }

    // Envoy's request headers: x-envoy-retry-on takes the HTTP words,
    // x-envoy-retry-grpc-on the gRPC ones, and unknown words are ignored.
    #[test]
    fn request_header_words_are_lenient_and_separate() {
        assert_eq!(
            RetryOn::from_request_header("5xx,bogus,unavailable", false),
            RetryOn::FIVE_XX
        );
        assert_eq!(
            RetryOn::from_request_header("cancelled, 5xx ,internal", true),
            RetryOn::GRPC_CANCELLED | RetryOn::GRPC_INTERNAL
        );
        assert_eq!(
            RetryOn::from_request_header("http3-post-connect-failure", false),
            RetryOn::HTTP3_POST_CONNECT_FAILURE
        );
    }
}
