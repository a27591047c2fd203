//! Access logs in Envoy's format language: `%OPERATOR%` commands in a text
//! line. Parsing (at config time) is separate from rendering (per request).

use std::{fmt::Write as _, io::Write as _, sync::Mutex, time::SystemTime};

use serde::Serialize;

/// Envoy's default access log format.
const ENVOY_DEFAULT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Format {
    pieces: Vec<Piece>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
enum Piece {
    Text(String),
    StartTime,
    Protocol,
    ResponseCode,
    ResponseFlags,
    ResponseCodeDetails,
    BytesReceived,
    BytesSent,
    Duration,
    UpstreamHost,
    UpstreamCluster,
    RouteName,
    DownstreamRemoteAddress,
    DownstreamRemoteAddressWithoutPort,
    DownstreamLocalAddress,
    /// `%REQ(A?B)%`: request header A, else B (pseudo-headers allowed).
    Req(String, Option<String>),
    Resp(String, Option<String>),
}

/// Looks up a header by lower-case name (pseudo-headers included).
pub type HeaderLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// What one request (or TCP connection) leaves for the access log.
#[derive(Default)]
pub struct Entry<'a> {
    pub start: Option<SystemTime>,
    pub protocol: &'a str,
    pub status: u16,
    pub flags: &'a str,
    pub details: &'a str,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub duration_ms: u64,
    pub upstream_host: Option<std::net::SocketAddr>,
    pub upstream_cluster: &'a str,
    pub route_name: &'a str,
    pub downstream_remote: Option<std::net::SocketAddr>,
    pub downstream_local: Option<std::net::SocketAddr>,
    pub request_header: Option<HeaderLookup<'a>>,
    pub response_header: Option<HeaderLookup<'a>>,
}

impl Format {
    pub fn envoy_default() -> Format {
        // The default format is known to parse; an empty format is the safe fallback.
        Format::parse(ENVOY_DEFAULT).unwrap_or(Format { pieces: Vec::new() })
    }

    pub fn parse(text: &str) -> Result<Format, String> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find('%') {
            if start > 0 {
                pieces.push(Piece::Text(rest[..start].to_string()));
            }
            let after = &rest[start + 1..];
            let end = after
                .find('%')
                .ok_or_else(|| format!("unterminated '%' in format '{text}'"))?;
            let op = &after[..end];
            if op.is_empty() {
                pieces.push(Piece::Text("%".into()));
            } else {
                pieces.push(parse_op(op)?);
            }
            rest = &after[end + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_string()));
        }
        Ok(Format { pieces })
    }

    pub fn render(&self, e: &Entry<'_>) -> String {
        let mut out = String::with_capacity(256);
        let dash = |out: &mut String, v: Option<String>| match v {
            Some(v) if !v.is_empty() => out.push_str(&v),
            _ => out.push('-'),
        };
        for p in &self.pieces {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::StartTime => dash(&mut out, e.start.map(format_time)),
                Piece::Protocol => dash(&mut out, Some(e.protocol.to_string())),
                Piece::ResponseCode => {
                    let _ = write!(out, "{}", e.status);
                }
                Piece::ResponseFlags => dash(&mut out, Some(e.flags.to_string())),
                Piece::ResponseCodeDetails => dash(&mut out, Some(e.details.to_string())),
                Piece::BytesReceived => {
                    let _ = write!(out, "{}", e.bytes_received);
                }
                Piece::BytesSent => {
                    let _ = write!(out, "{}", e.bytes_sent);
                }
                Piece::Duration => {
                    let _ = write!(out, "{}", e.duration_ms);
                }
                Piece::UpstreamHost => dash(&mut out, e.upstream_host.map(|a| a.to_string())),
                Piece::UpstreamCluster => dash(&mut out, Some(e.upstream_cluster.to_string())),
                Piece::RouteName => dash(&mut out, Some(e.route_name.to_string())),
                Piece::DownstreamRemoteAddress => dash(&mut out, e.downstream_remote.map(|a| a.to_string())),
                Piece::DownstreamRemoteAddressWithoutPort => {
                    dash(&mut out, e.downstream_remote.map(|a| a.ip().to_string()))
                }
                Piece::DownstreamLocalAddress => dash(&mut out, e.downstream_local.map(|a| a.to_string())),
                Piece::Req(a, b) => dash(&mut out, lookup(e.request_header, a, b)),
                Piece::Resp(a, b) => dash(&mut out, lookup(e.response_header, a, b)),
            }
        }
        out
    }
}

fn lookup(f: Option<HeaderLookup<'_>>, a: &str, b: &Option<String>) -> Option<String> {
    let f = f?;
    f(a).or_else(|| b.as_deref().and_then(f))
}

fn parse_op(op: &str) -> Result<Piece, String> {
    let header = |inner: &str| -> (String, Option<String>) {
        // A trailing ":N" length limit is accepted and not applied.
        let mut parts = inner.splitn(2, '?');
        let a = parts.next().unwrap_or("").to_ascii_lowercase();
        let b = parts.next().map(|s| s.to_ascii_lowercase());
        (a, b)
    };
    let with_args = |name: &str| -> Option<&str> {
        op.strip_prefix(name)
            .and_then(|r| r.strip_prefix('('))
            .and_then(|r| r.rfind(')').map(|i| &r[..i]))
    };
    if let Some(inner) = with_args("REQ") {
        let (a, b) = header(inner);
        return Ok(Piece::Req(a, b));
    }
    if let Some(inner) = with_args("RESP") {
        let (a, b) = header(inner);
        return Ok(Piece::Resp(a, b));
    }
    if op.starts_with("START_TIME") {
        // Custom strftime patterns are rendered in the default form.
        return Ok(Piece::StartTime);
    }
    Ok(match op {
        "PROTOCOL" => Piece::Protocol,
        "RESPONSE_CODE" => Piece::ResponseCode,
        "RESPONSE_FLAGS" => Piece::ResponseFlags,
        "RESPONSE_CODE_DETAILS" => Piece::ResponseCodeDetails,
        "BYTES_RECEIVED" => Piece::BytesReceived,
        "BYTES_SENT" => Piece::BytesSent,
        "DURATION" => Piece::Duration,
        "UPSTREAM_HOST" => Piece::UpstreamHost,
        "UPSTREAM_CLUSTER" => Piece::UpstreamCluster,
        "ROUTE_NAME" => Piece::RouteName,
        "DOWNSTREAM_REMOTE_ADDRESS" => Piece::DownstreamRemoteAddress,
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => Piece::DownstreamRemoteAddressWithoutPort,
        "DOWNSTREAM_LOCAL_ADDRESS" => Piece::DownstreamLocalAddress,
        other => return Err(format!("access log operator %{other}% is not supported yet")),
    })
}

/// RFC 3339 UTC with milliseconds, as Envoy's default START_TIME.
fn format_time(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Where rendered lines go. Writes are small and whole-line, under a lock.
pub struct Sink {
    out: Mutex<Box<dyn std::io::Write + Send>>,
}

impl Sink {
    pub fn open(path: &str) -> std::io::Result<Sink> {
        let out: Box<dyn std::io::Write + Send> = match path {
            "/dev/stdout" => Box::new(std::io::stdout()),
            "/dev/stderr" => Box::new(std::io::stderr()),
            p => Box::new(std::fs::OpenOptions::new().create(true).append(true).open(p)?),
        };
        Ok(Sink { out: Mutex::new(out) })
    }

    pub fn write(&self, line: &str) {
        if let Ok(mut out) = self.out.lock() {
            let _ = out.write_all(line.as_bytes());
            let _ = out.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_format_parses_and_renders_dashes() {
        let f = Format::envoy_default();
        let line = f.render(&Entry {
            status: 404,
            flags: "NR",
            protocol: "HTTP/1.1",
            ..Default::default()
        });
        assert!(line.contains("404 NR"), "{line}");
        assert!(line.ends_with("\"-\"\n"), "{line}");
    }

    #[test]
    fn unknown_operator_is_named() {
        let e = Format::parse("%UPSTREAM_PEER_URI_SAN%").unwrap_err();
        assert!(e.contains("UPSTREAM_PEER_URI_SAN"), "{e}");
    }

    #[test]
    fn time_is_rfc3339() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123);
        assert_eq!(format_time(t), "2023-11-14T22:13:20.123Z");
    }
}
