//! Request hashing for the consistent-hash balancers: xxHash64 (the hash Envoy
//! uses for ring hash, maglev and route hash policies) and Envoy's evaluation of
//! a route's `hash_policy` list. Pure functions; it never picks a host.

use std::{fmt::Write as _, net::IpAddr};

use http::{header::COOKIE, HeaderMap, HeaderName};

const P1: u64 = 0x9E37_79B1_85EB_CA87;
const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const P3: u64 = 0x1656_67B1_9E37_79F9;
const P4: u64 = 0x85EB_CA77_C2B2_AE63;
const P5: u64 = 0x27D4_EB2F_1656_67C5;

fn read_u64(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[..8]);
    u64::from_le_bytes(w)
}

fn read_u32(b: &[u8]) -> u64 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[..4]);
    u64::from(u32::from_le_bytes(w))
}

fn round(acc: u64, lane: u64) -> u64 {
    acc.wrapping_add(lane.wrapping_mul(P2)).rotate_left(31).wrapping_mul(P1)
}

fn merge(acc: u64, lane: u64) -> u64 {
    (acc ^ round(0, lane)).wrapping_mul(P1).wrapping_add(P4)
}

/// XXH64 of `data` with `seed`, bit-for-bit the reference algorithm (Envoy's
/// `HashUtil::xxHash64`, seed 0 unless stated).
pub fn xxh64(data: &[u8], seed: u64) -> u64 {
    let mut rest = data;
    let mut h = if data.len() >= 32 {
        let mut v = [
            seed.wrapping_add(P1).wrapping_add(P2),
            seed.wrapping_add(P2),
            seed,
            seed.wrapping_sub(P1),
        ];
        while rest.len() >= 32 {
            for (i, lane) in v.iter_mut().enumerate() {
                *lane = round(*lane, read_u64(&rest[i * 8..]));
            }
            rest = &rest[32..];
        }
        let mut h = v[0]
            .rotate_left(1)
            .wrapping_add(v[1].rotate_left(7))
            .wrapping_add(v[2].rotate_left(12))
            .wrapping_add(v[3].rotate_left(18));
        for lane in v {
            h = merge(h, lane);
        }
        h
    } else {
        seed.wrapping_add(P5)
    };
    h = h.wrapping_add(data.len() as u64);
    while rest.len() >= 8 {
        h ^= round(0, read_u64(rest));
        h = h.rotate_left(27).wrapping_mul(P1).wrapping_add(P4);
        rest = &rest[8..];
    }
    if rest.len() >= 4 {
        h ^= read_u32(rest).wrapping_mul(P1);
        h = h.rotate_left(23).wrapping_mul(P2).wrapping_add(P3);
        rest = &rest[4..];
    }
    for &b in rest {
        h ^= u64::from(b).wrapping_mul(P5);
        h = h.rotate_left(11).wrapping_mul(P1);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(P2);
    h ^= h >> 29;
    h = h.wrapping_mul(P3);
    h ^ (h >> 32)
}

/// One entry of a route's `hash_policy` (RouteAction.HashPolicy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashPolicy {
    pub kind: HashKind,
    /// As Envoy: once a terminal policy is reached and a hash exists, the rest are skipped.
    pub terminal: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKind {
    /// `header.header_name` (no `regex_rewrite` yet).
    Header(HeaderName),
    /// `cookie.name`; a missing cookie yields no hash (no `ttl` cookie generation).
    Cookie(String),
    /// `connection_properties.source_ip: true`.
    SourceIp,
    /// `query_parameter.name`: the first value of that parameter, as written
    /// (not percent-decoded, as Envoy's `parseQueryString`); a parameter
    /// without '=' has the empty value, which hashes too.
    QueryParameter(String),
}

/// The request's hash under `policies`, as Envoy's `HashPolicyImpl::generateHash`:
/// each policy that yields a value folds in as `hash.rotate_left(1) ^ new`, and
/// evaluation stops at a terminal policy once any hash exists. None when no
/// policy yields a value (the balancer then hashes at random, as Envoy).
pub fn request_hash(
    policies: &[HashPolicy],
    headers: &HeaderMap,
    query: Option<&str>,
    source: Option<IpAddr>,
) -> Option<u64> {
    let mut hash: Option<u64> = None;
    for policy in policies {
        let new = match &policy.kind {
            HashKind::Header(name) => header_hash(headers, name),
            HashKind::Cookie(name) => cookie_value(headers, name.as_bytes()).map(|v| xxh64(v, 0)),
            HashKind::SourceIp => source.map(source_ip_hash),
            HashKind::QueryParameter(name) => query_value(query, name).map(|v| xxh64(v.as_bytes(), 0)),
        };
        if let Some(new) = new {
            hash = Some(hash.map_or(0, |h| h.rotate_left(1)) ^ new);
        }
        if policy.terminal && hash.is_some() {
            break;
        }
    }
    hash
}

/// Envoy sorts a repeated header's values (so order does not matter) and hashes
/// them with `HashUtil::xxHash64(Span)`, which chains: each value is hashed
/// with the previous value's hash as seed, starting from seed 0.
fn header_hash(headers: &HeaderMap, name: &HeaderName) -> Option<u64> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    let Some(second) = values.next() else {
        return Some(xxh64(first.as_bytes(), 0));
    };
    let mut all: Vec<&[u8]> = vec![first.as_bytes(), second.as_bytes()];
    all.extend(values.map(|v| v.as_bytes()));
    all.sort_unstable();
    Some(all.iter().fold(0, |seed, v| xxh64(v, seed)))
}

/// The first cookie named `name` across all Cookie headers, parsed as Envoy's
/// `Http::Utility::parseCookieValue`: split on ';' (empty pieces dropped), the
/// name runs from the first non-space to the first '=', the value is the rest
/// with one pair of surrounding double quotes removed. Pieces without '=' are
/// skipped; the first matching name wins even if its value is empty, and an
/// empty value yields no hash.
fn cookie_value<'a>(headers: &'a HeaderMap, name: &[u8]) -> Option<&'a [u8]> {
    for header in headers.get_all(COOKIE) {
        for piece in header.as_bytes().split(|&b| b == b';').filter(|p| !p.is_empty()) {
            let Some(eq) = piece.iter().position(|&b| b == b'=') else {
                continue;
            };
            let start = piece.iter().position(|&b| b != b' ').unwrap_or(eq);
            if &piece[start..eq] != name {
                continue;
            }
            let mut value = &piece[eq + 1..];
            if value.len() >= 2 && value[0] == b'"' && value[value.len() - 1] == b'"' {
                value = &value[1..value.len() - 1];
            }
            return (!value.is_empty()).then_some(value);
        }
    }
    None
}

/// The first value of query parameter `name` in `query` (the part after '?').
fn query_value<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|pair| match pair.split_once('=') {
        Some((k, v)) if k == name => Some(v),
        None if pair == name => Some(""),
        _ => None,
    })
}

/// Envoy hashes `Ip::addressAsString()`: dotted quad for IPv4, inet_ntop's form
/// for IPv6 (no brackets, no port). Rust's Display matches inet_ntop except for
/// IPv4-compatible addresses (`::a.b.c.d`), which glibc prints dotted.
fn source_ip_hash(ip: IpAddr) -> u64 {
    let mut buf = StackStr::default();
    let written = match ip {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if s[..6].iter().all(|&x| x == 0) && s[6] != 0 {
                let o = v6.octets();
                write!(buf, "::{}.{}.{}.{}", o[12], o[13], o[14], o[15])
            } else {
                write!(buf, "{v6}")
            }
        }
        IpAddr::V4(v4) => write!(buf, "{v4}"),
    };
    debug_assert!(written.is_ok());
    xxh64(buf.as_bytes(), 0)
}

/// A fixed buffer long enough for any IP address text, so hashing the source IP
/// does not allocate.
struct StackStr {
    buf: [u8; 48],
    len: usize,
}

impl Default for StackStr {
    fn default() -> Self {
        StackStr { buf: [0; 48], len: 0 }
    }
}

impl StackStr {
    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl std::fmt::Write for StackStr {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let dst = self.buf.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    // Reference XXH64 vectors (seeds 0, 1 and others; short, 4..8-byte tails and
    // 32-byte stripes), including the ones in Envoy's test/common/common/hash_test.cc.
    #[test]
    fn xxh64_matches_reference_vectors() {
        let long: Vec<u8> = (0u8..100).collect();
        let cases: &[(&[u8], u64, u64)] = &[
            (b"", 0, 0xEF46_DB37_51D8_E999),
            (b"a", 0, 0xD24E_C4F1_A98C_6E5B),
            (b"foo", 0, 3728699739546630719),
            (b"bar", 0, 5234164152756840025),
            (b"foo\nbar", 0, 8917841378505826757),
            (b"lyft", 0, 4400747396090729504),
            (b"foobar", 0, 11721187498075204345),
            (b"Nobody inspects the spammish repetition", 0, 18144624926692707313),
            (
                b"Nobody inspects the spammish repetition",
                20141025,
                14845715267409225478,
            ),
            (b"127.0.0.1:90", 1, 1521841302816948213),
            (&long, 7, 9251869722998766813),
        ];
        for &(input, seed, want) in cases {
            assert_eq!(
                xxh64(input, seed),
                want,
                "{:?} seed {seed}",
                String::from_utf8_lossy(input)
            );
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    fn header(name: &str, terminal: bool) -> HashPolicy {
        HashPolicy {
            kind: HashKind::Header(HeaderName::from_bytes(name.as_bytes()).unwrap()),
            terminal,
        }
    }

    fn cookie(name: &str) -> HashPolicy {
        HashPolicy {
            kind: HashKind::Cookie(name.into()),
            terminal: false,
        }
    }

    // Envoy HeaderHashMethod: one value hashes alone; repeated values are sorted
    // then chained like HashUtil::xxHash64(Span) (hash_test.cc: the span
    // {"foo","bar"} hashes to 17745830980996999794), so their order does not matter.
    #[test]
    fn header_values_hash_sorted_and_chained() {
        let p = [header("x-user", false)];
        let one = request_hash(&p, &headers(&[("x-user", "foo")]), None, None);
        assert_eq!(one, Some(xxh64(b"foo", 0)));
        let ab = request_hash(&p, &headers(&[("x-user", "foo"), ("x-user", "bar")]), None, None);
        let ba = request_hash(&p, &headers(&[("x-user", "bar"), ("x-user", "foo")]), None, None);
        assert_eq!(xxh64(b"bar", xxh64(b"foo", 0)), 17745830980996999794);
        assert_eq!(ab, Some(xxh64(b"foo", xxh64(b"bar", 0))));
        assert_eq!(ab, ba);
        assert_eq!(request_hash(&p, &headers(&[("other", "foo")]), None, None), None);
        assert_eq!(
            request_hash(&p, &headers(&[("x-user", "")]), None, None),
            Some(xxh64(b"", 0))
        );
    }

    // Envoy generateHash: results fold as rotl(h, 1) ^ new; policies without a
    // value are skipped; a terminal policy stops evaluation once any hash
    // exists (even one produced by an earlier policy).
    #[test]
    fn policies_combine_and_terminal_stops() {
        let h = headers(&[("a", "1"), ("b", "2")]);
        let (ha, hb) = (xxh64(b"1", 0), xxh64(b"2", 0));
        let ip: IpAddr = [10, 0, 0, 1].into();
        let hip = xxh64(b"10.0.0.1", 0);
        let src = HashPolicy {
            kind: HashKind::SourceIp,
            terminal: false,
        };
        let cases: Vec<(Vec<HashPolicy>, Option<u64>)> = vec![
            (vec![], None),
            (
                vec![header("a", false), header("b", false)],
                Some(ha.rotate_left(1) ^ hb),
            ),
            (
                vec![header("a", false), header("a", false)],
                Some(ha.rotate_left(1) ^ ha),
            ),
            (vec![header("missing", false), header("b", false)], Some(hb)),
            (vec![header("a", true), header("b", false)], Some(ha)),
            (vec![header("missing", true), header("b", false)], Some(hb)),
            (
                vec![header("a", false), header("missing", true), header("b", false)],
                Some(ha),
            ),
            (vec![header("a", false), src.clone()], Some(ha.rotate_left(1) ^ hip)),
        ];
        for (policies, want) in cases {
            assert_eq!(request_hash(&policies, &h, None, Some(ip)), want, "{policies:?}");
        }
        assert_eq!(request_hash(&[src], &h, None, None), None);
    }

    // Envoy Utility::parseCookieValue over every Cookie header.
    #[test]
    fn cookie_parsing_follows_envoy() {
        let cases: &[(&[&str], &str, Option<&str>)] = &[
            (&["session=abc"], "session", Some("abc")),
            (&["a=1; session=abc; b=2"], "session", Some("abc")),
            (&["a=1;session=abc"], "session", Some("abc")),
            (&["session=\"abc\""], "session", Some("abc")),
            (&["session=\""], "session", Some("\"")),
            (&["session=a=b"], "session", Some("a=b")),
            (&["session=first; session=second"], "session", Some("first")),
            (&["a=1", "session=two"], "session", Some("two")),
            (&["session=; session=x"], "session", None),
            (&["nosep; session=x"], "session", Some("x")),
            (&["sessionx=1; xsession=2"], "session", None),
            (&["session =1"], "session", None),
            (&["a=1;  session=x "], "session", Some("x ")),
            (&[], "session", None),
        ];
        for &(values, name, want) in cases {
            let pairs: Vec<(&str, &str)> = values.iter().map(|v| ("cookie", *v)).collect();
            let got = request_hash(&[cookie(name)], &headers(&pairs), None, None);
            assert_eq!(got, want.map(|w| xxh64(w.as_bytes(), 0)), "{values:?}");
        }
    }

    // Envoy IpHashMethod hashes addressAsString(): no port, no brackets,
    // inet_ntop's IPv6 form.
    #[test]
    fn source_ip_hashes_address_text() {
        let src = [HashPolicy {
            kind: HashKind::SourceIp,
            terminal: false,
        }];
        let cases: &[(&str, &str)] = &[
            ("192.168.1.20", "192.168.1.20"),
            ("2001:db8::1", "2001:db8::1"),
            ("::1", "::1"),
            ("::", "::"),
            ("::ffff:10.1.2.3", "::ffff:10.1.2.3"),
            ("::10.1.2.3", "::10.1.2.3"),
            ("fe80::aa:0:0:1", "fe80::aa:0:0:1"),
        ];
        for &(ip, text) in cases {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(
                request_hash(&src, &HeaderMap::new(), None, Some(ip)),
                Some(xxh64(text.as_bytes(), 0)),
                "{ip}"
            );
        }
    }

    // Envoy's QueryParameterHashMethod: the first value of the parameter, as
    // written in the path; a missing parameter gives no hash.
    #[test]
    fn query_parameter_hashes_its_first_value() {
        let p = [HashPolicy {
            kind: HashKind::QueryParameter("user".into()),
            terminal: false,
        }];
        let h = HeaderMap::new();
        assert_eq!(
            request_hash(&p, &h, Some("a=1&user=bob&user=al"), None),
            Some(xxh64(b"bob", 0))
        );
        assert_eq!(request_hash(&p, &h, Some("user"), None), Some(xxh64(b"", 0)));
        assert_eq!(request_hash(&p, &h, Some("username=x"), None), None);
        assert_eq!(request_hash(&p, &h, None, None), None);
    }
}
